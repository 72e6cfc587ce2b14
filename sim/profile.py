"""The calibration profile: a fitted step-time model and the context it was measured in.

Written by calibration (profile -> fit), read by FittedCostModel. Coefficient names are the
StepFeatures field names plus "const", so a coefficient multiplies the feature of the same
name: t = const + sum(coefficients[k] * features.k). A profile may hold a token curve as well:
the step's time as a piecewise-linear function of its tokens, added to the sum (and then standing
for const and prefill_tokens, which the fit leaves out), because a CPU's matrix kernels do not
cost the same per token at every batch size (calibration.fit). A profile carries enough context
(hardware, model, dtype, TP, page size) for the cluster to refuse one measured for another
setup, and its fit error so a run can be repeated at the error bounds.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from typing_extensions import Self

from core_api.config_file import parse_json
from core_api.validation_errors import format_validation_error
from sim.hardware import ModelSpec
from sim.idle_cost import IdleCost
from sim.network import LinkSpec
from sim.stream_cost import StreamCost

KNOWN_COEFFICIENTS = ("const", "prefill_tokens", "prefill_seqs", "prefill_attn", "prefill_context",
                      "decode_seqs", "decode_context", "sampled")


class ProfileError(ValueError):
    """A profile file that cannot be read or fails the schema; the message names the field."""


def _iso_date(v: str) -> str:
    try:
        _dt.datetime.fromisoformat(v)
    except ValueError:
        raise ValueError(f"not an ISO date/datetime: {v!r}") from None
    return v


IsoDate = Annotated[str, AfterValidator(_iso_date)]


class ProfileFile(BaseModel):
    """What every kind of profile file shares: strict validation, loading with errors that name
    the file and the field, and saving. `what` names the kind in messages."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    what: ClassVar[str] = "cost profile"

    @classmethod
    def from_dict(cls, data: Any, source: str = "profile") -> Self:
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise ProfileError(f"{source}: invalid {cls.what}: {format_validation_error(e)}") from None

    @classmethod
    def load(cls, path: str | Path) -> Self:
        return cls.from_dict(read_json(path, cls.what, ProfileError), source=str(path))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=2) + "\n")


class TokenCurve(BaseModel):
    """Seconds of a step by the tokens it computes (prefill tokens + decode rows), piecewise
    linear between the knots, as sim.interpolate.Table1D reads it: flat below the first knot,
    extended along the last segment above the last."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    tokens: list[float] = Field(min_length=1, max_length=64)
    seconds: list[float] = Field(min_length=1, max_length=64)

    @model_validator(mode="after")
    def _knots(self) -> Self:
        if len(self.tokens) != len(self.seconds):
            raise ValueError(f"tokens has {len(self.tokens)} knots, seconds {len(self.seconds)}")
        if any(b <= a for a, b in zip(self.tokens, self.tokens[1:])) or self.tokens[0] < 0:
            raise ValueError("tokens must be non-negative and strictly increasing")
        if any(x < 0 for x in self.seconds):
            raise ValueError("seconds must be non-negative")
        return self


class CostProfile(ProfileFile):

    hardware: str = Field(description="device name, e.g. 'NVIDIA H100 80GB HBM3' or 'cpu: AMD EPYC ...'")
    model: str | ModelSpec = Field(description="preset name or full model spec")
    dtype: Literal["fp32", "fp16", "bf16", "fp8"]
    tp: int = Field(ge=1)
    page_size: int = Field(ge=1)
    engine_version: str
    coefficients: dict[str, float]
    token_curve: TokenCurve | None = Field(default=None, description=(
        "step seconds by tokens computed, added to the coefficients' sum (calibrate fit --form curve)"))
    transfer: LinkSpec | None = Field(default=None, description="fitted KV transfer latency + bandwidth")
    rpc_latency_s: float | None = Field(default=None, ge=0, description=(
        "measured round trip of a no-op control call router -> engine -> router (ClusterConfig.rpc_latency_s)"))
    send_overhead_s: float | None = Field(default=None, ge=0, description=(
        "measured engine CPU per remote_send outside steps (ClusterConfig.send_overhead_s)"))
    recv_overhead_s: float | None = Field(default=None, ge=0, description=(
        "measured receiving engine CPU per KV handoff outside steps (ClusterConfig.recv_overhead_s)"))
    generate_overhead_s: float | None = Field(default=None, ge=0, description=(
        "measured engine CPU handling a start_generate of a new request (ClusterConfig.generate_overhead_s)"))
    handoff_generate_overhead_s: float | None = Field(default=None, ge=0, description=(
        "measured engine CPU handling a start_generate of a handed-off request "
        "(ClusterConfig.handoff_generate_overhead_s)"))
    router_cpu_per_token_s: float | None = Field(default=None, ge=0, description=(
        "measured router CPU per streamed token, for hosts where the router shares the engines' cores "
        "(ClusterConfig.router_cpu_per_token_s; `calibrate fit --colocated-router`)"))
    stream: StreamCost | None = Field(default=None, description=(
        "measured cost of streaming tokens to the router, with the profiled engine's stream interval "
        "(ClusterConfig.stream)"))
    idle: IdleCost | None = Field(default=None, description=(
        "measured extra of the first step after an idle spell, by its length (ClusterConfig.idle)"))
    fit_error: dict[str, float] = Field(default_factory=dict, description="feature/metric -> MAPE (0.05 = 5%)")
    sample_count: int = Field(ge=0)
    created: IsoDate = Field(description="ISO date or datetime")
    environment: dict[str, Any] = Field(default_factory=dict)

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    @field_validator("coefficients")
    @classmethod
    def _known_names(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(KNOWN_COEFFICIENTS))
        if unknown:
            raise ValueError(f"unknown coefficient(s) {', '.join(map(repr, unknown))}; "
                             f"known: {', '.join(KNOWN_COEFFICIENTS)}")
        bad = [k for k, x in v.items() if not math.isfinite(x)]
        if bad:
            raise ValueError(f"coefficient(s) {', '.join(bad)} not finite")
        return v



def read_json(path: str | Path, what: str, error: type[Exception]) -> Any:
    """A JSON file's content; unreadable or malformed files raise `error` naming the file
    (and the line and column of a syntax error)."""
    path = Path(path)
    try:
        return parse_json(path.read_text())
    except OSError as e:
        raise error(f"{path}: cannot read {what}: {e.strerror}") from None
    except json.JSONDecodeError as e:
        raise error(f"{path}: not JSON (line {e.lineno}, column {e.colno}): {e.msg}") from None


