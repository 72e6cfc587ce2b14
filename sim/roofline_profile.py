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
from sim.cost_models import register
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


def _build(profile: RooflineProfile, cluster, engine, engine_id: str | None, path: str):
    from sim.cost_model import RooflineCostModel
    from sim.hardware import get_model
    from sim.profile_match import check_roofline_gpu

    check_roofline_gpu(profile, engine, path, engine_id)
    efficiency = {**profile.efficiency.model_dump(), **cluster.efficiency}  # the cluster's overrides win
    return RooflineCostModel(engine.gpu, get_model(engine.model, engine.dtype), engine.tp, efficiency)


register("roofline", lambda data, source: RooflineProfile.from_dict(data, source=source), _build)
