"""A roofline fitted to measurements: efficiency factors for one GPU (or for any GPU).

Unlike a layer table, a roofline prices any model and any tensor-parallel degree on the GPU it
was fitted for, from that GPU's datasheet peaks and the fitted fractions of them. This is what
extrapolates to a TP degree or a model nobody profiled. Written by `calibrate roofline`
(calibration/roofline_fit.py), loaded through sim.profile.load_profile (`kind: "roofline"`).
"""
from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from sim.cost_model import RooflineEfficiency
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
