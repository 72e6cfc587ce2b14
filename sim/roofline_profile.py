"""A roofline fitted to measurements: efficiency factors for one GPU (or for any GPU).

Unlike a layer table, a roofline prices any model and any tensor-parallel degree on the GPU it
was fitted for, from that GPU's datasheet peaks and the fitted fractions of them. This is what
extrapolates to a TP degree or a model nobody profiled. Written by `calibrate roofline`
(calibration/roofline_fit.py), loaded through sim.cost_models.load_profile (`kind: "roofline"`).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from sim.cost_model import RooflineEfficiency
from sim.cost_models import CostModelSpec, load_profile, register
from sim.layer_profile import ProfileSource
from sim.profile import IsoDate, ProfileFile


class RooflineProfile(ProfileFile):
    what: ClassVar[str] = "roofline profile"

    kind: Literal["roofline"] = "roofline"
    source: ProfileSource
    gpu: str | None = Field(description="GPU preset the factors were fitted for; None: fitted across GPUs")
    efficiency: RooflineEfficiency
    fit_error: dict[str, float] = Field(default_factory=dict, description=(
        "held-out error by check, e.g. 'tp_holdout.tp2' or 'gpu_holdout' (MAPE, 0.05 = 5%)"))
    sample_count: int = Field(ge=0)
    created: IsoDate


class RooflineSpec(CostModelSpec):
    """The roofline: datasheet peaks of the engine's GPU times efficiency factors: the built-in ones
    (fitted on all public GPU data), or those of a roofline profile at `path`; `efficiency`
    overrides single factors of either (sim.cost_model.RooflineEfficiency names them)."""

    kind: Literal["roofline"] = "roofline"
    path: str | None = None
    efficiency: dict[str, float] = Field(default_factory=dict)


def _build(spec: RooflineSpec, cluster, engine, engine_id: str | None):
    from sim.cost_model import RooflineCostModel
    from sim.profile_match import check_roofline_gpu

    efficiency = dict(spec.efficiency)
    if spec.path is not None:
        profile = load_profile(spec.path, spec.kind)
        check_roofline_gpu(profile, engine, spec.path, engine_id)
        efficiency = {**profile.efficiency.model_dump(), **efficiency}  # the overrides win
    return RooflineCostModel(engine.gpu, engine.model_spec(), engine.tp, efficiency or None)


register(RooflineSpec, _build, lambda data, source: RooflineProfile.from_dict(data, source=source))
