"""A roofline fitted to measurements: efficiency factors for one GPU (or for any GPU).

Unlike a layer table, a roofline prices any model and any tensor-parallel degree on the GPU it
was fitted for, from that GPU's datasheet peaks and the fitted fractions of them. This is what
extrapolates to a TP degree or a model nobody profiled. Written by `calibrate roofline`
(calibration/roofline_fit.py), loaded through sim.profile.load_profile (`kind: "roofline"`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sim.cost_model import RooflineEfficiency
from sim.layer_profile import ProfileSource
from sim.profile import ProfileError, format_validation_error, read_json


class RooflineProfile(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    kind: Literal["roofline"] = "roofline"
    source: ProfileSource
    gpu: str | None = Field(description="GPU preset the factors were fitted for; None: fitted across GPUs")
    efficiency: RooflineEfficiency
    fit_error: dict[str, float] = Field(default_factory=dict, description=(
        "held-out error by check, e.g. 'tp_holdout.tp2' or 'gpu_holdout' (MAPE, 0.05 = 5%)"))
    sample_count: int = Field(ge=0)
    created: str

    @classmethod
    def from_dict(cls, data: Any, source: str = "profile") -> RooflineProfile:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ProfileError(f"{source}: invalid roofline profile: {format_validation_error(e)}") from None

    @classmethod
    def load(cls, path: str | Path) -> RooflineProfile:
        return cls.from_dict(read_json(path, "roofline profile", ProfileError), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")
