"""A measured per-layer profile: kernel times on a grid, the step time composed from them.

Where a fitted formula would smooth over what a GPU really does (cuBLAS tile steps, attention
kernels whose cost is set by the context of a mixed prefill+decode batch), a table of
measurements interpolated linearly is the better model. A layer profile holds, for one model
on one GPU at one tensor-parallel degree:

- `dense`: time of each non-attention operator (projections, MLP, norms, RoPE, embedding)
  versus the number of tokens in the step;
- `attention`: one attention call over a mixed batch versus (prefill chunk tokens, their
  cached context, decode sequences, mean decode context);
- `per_sequence`: LM head and sampler versus the number of sequences that sample;
- `per_layer` / `per_step`: how many times each operator runs per decoder layer and per step,
  so that step = per_step ops + num_layers x (per_layer ops + attention) + per_sequence ops.

With tp > 1 the tables are per rank and exclude communication: two all-reduces per layer
are added from the GPU's interconnect (`sim.hardware`, efficiency as the roofline's).

The file is JSON (`kind: "layers"`); `calibration.importers` write it from public profiler
output, with the source recorded and the held-out interpolation error of every table.
"""
from __future__ import annotations

from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from sim.hardware import ModelSpec
from sim.profile import IsoDate, ProfileFile


class Curve(BaseModel):
    """Measured (x, time) points of one operator; x is tokens or sequences."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    x: list[float] = Field(min_length=1)
    us: list[float] = Field(min_length=1, description="microseconds, one per x")

    @model_validator(mode="after")
    def _same_length(self) -> Curve:
        if len(self.x) != len(self.us):
            raise ValueError(f"x has {len(self.x)} values but us has {len(self.us)}")
        if any(v < 0 for v in self.us) or any(v < 0 for v in self.x):
            raise ValueError("times and sizes must be >= 0")
        if len(set(self.x)) != len(self.x):
            raise ValueError("x values must be unique")
        return self


class AttentionGrid(BaseModel):
    """Columns of the attention measurements, one row per measured batch shape."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    prefill_chunk: list[int]
    kv_prefill: list[int]
    n_decode: list[int]
    kv_decode: list[int]
    us: list[float] = Field(min_length=1)

    @model_validator(mode="after")
    def _same_length(self) -> AttentionGrid:
        n = len(self.us)
        for name in ("prefill_chunk", "kv_prefill", "n_decode", "kv_decode"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"{name} has {len(getattr(self, name))} values, us has {n}")
        return self

    def rows(self) -> list[tuple[int, int, int, int, float]]:
        return list(zip(self.prefill_chunk, self.kv_prefill, self.n_decode, self.kv_decode, self.us))


class ProfileSource(BaseModel):
    """Where the measurements came from, so a result can name what priced it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the profiler or dataset, e.g. 'LLMServingSim vLLM layer profiler'")
    path: str | None = None
    revision: str | None = None
    license: str | None = None
    notes: str | None = None


class LayerProfile(ProfileFile):
    what: ClassVar[str] = "layer profile"

    kind: Literal["layers"] = "layers"
    source: ProfileSource
    hardware: str = Field(description="device name as the profiler saw it")
    gpu: str | None = Field(default=None, description="GPU preset it corresponds to (for interconnect terms)")
    model: str | ModelSpec
    dtype: Literal["fp32", "fp16", "bf16", "fp8"]
    tp: int = Field(ge=1)
    page_size: int = Field(ge=1)
    engine_version: str
    per_layer: dict[str, int] = Field(description="operator -> calls per decoder layer")
    per_step: dict[str, int] = Field(default_factory=dict, description="operator -> calls per step (outside layers)")
    dense: dict[str, Curve] = Field(description="operator -> time vs tokens in the step")
    per_sequence: dict[str, Curve] = Field(default_factory=dict, description="operator -> time vs sampled sequences")
    attention: AttentionGrid
    decode_skew_alpha: float = Field(default=0.0, ge=0, le=1, description=(
        "decode attention over mixed context lengths: t = t(mean) + alpha * (t(max) - t(mean)), "
        "alpha fitted by the profiler on skewed batches (0: none measured)"))
    fit_error: dict[str, float] = Field(default_factory=dict, description=(
        "table -> held-out MAPE of its interpolation (each interior point predicted from its neighbours)"))
    sample_count: int = Field(ge=0)
    created: IsoDate

    @model_validator(mode="after")
    def _operators_measured(self) -> LayerProfile:
        missing = sorted((set(self.per_layer) | set(self.per_step)) - set(self.dense))
        if missing:
            raise ValueError(f"operators {missing} are counted in per_layer/per_step but have no dense curve")
        return self

    @property
    def model_name(self) -> str:
        return self.model if isinstance(self.model, str) else self.model.name

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json() + "\n")  # not indented: tables of thousands of rows
