"""What a profiling run measured: one record per step shape and per transfer size.

The profiler writes it, the fitter reads it, so it is a pydantic schema: a samples file from
another machine or an older version fails loudly with the field named, rather than fitting
garbage. Times are medians over repeats; the repeats are kept so noise can be inspected.
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import ConfigDict, Field, ValidationError, field_validator

from core_api.config_base import Strict
from core_api.step import STEP_FEATURES, StepFeatures
from core_api.validation_errors import format_validation_error
from sim.hardware import ModelSpec
from sim.profile import read_json

STEP_KINDS = ("prefill", "decode", "mixed")
FEATURE_NAMES = STEP_FEATURES


class SamplesError(ValueError):
    """A samples file that cannot be read or fails the schema; the message names the field."""


class StrictFinite(Strict):
    """Measurements: no unknown field, and no NaN or infinity (a broken timer, not a number)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class StepSample(StrictFinite):
    """One step shape: its features (what the scheduler would report) and its measured time."""

    kind: Literal["prefill", "decode", "mixed"]
    label: str = Field(description="grid point, e.g. 'prefill n=128 ctx=256 x2'")
    features: dict[str, float]
    time_s: float = Field(gt=0, description="median over repeats")
    times_s: list[float] = Field(default_factory=list, description="every repeat")

    @field_validator("features")
    @classmethod
    def _known(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(FEATURE_NAMES))
        if unknown:
            raise ValueError(f"unknown feature(s) {unknown}; known: {', '.join(FEATURE_NAMES)}")
        return v

    @staticmethod
    def kind_of(f: StepFeatures) -> str:
        if f.prefill_tokens and f.decode_seqs:
            return "mixed"
        return "prefill" if f.prefill_tokens else "decode"


class TransferSample(StrictFinite):
    """One KV transfer of `pages` pages (`nbytes` bytes) between two engines, sender to landed."""

    pages: int = Field(ge=1)
    nbytes: int = Field(ge=1)
    time_s: float = Field(gt=0)
    times_s: list[float] = Field(default_factory=list)


class StreamSample(StrictFinite):
    """What streaming tokens to the router costs an engine: `seqs` decoding sequences whose tokens
    go out in one message every `steps` steps, against the same steps with nothing streamed.
    `extra_s` is the median over pairs of repeats of the added time per message: queueing each token,
    encoding and sending the message, and the slower step after it (the send evicts the step's
    working set from the core's caches)."""

    seqs: int = Field(ge=1)
    steps: int = Field(ge=1, description="steps per message")
    tokens: int = Field(ge=1, description="tokens per message (seqs x steps)")
    extra_s: float = Field(description="median added seconds per message (over pairs of repeats)")
    extras_s: list[float] = Field(default_factory=list, description="every repeat")


class IdleSample(StrictFinite):
    """What sitting idle costs the next step: a prefill of `tokens` tokens right after the engine's
    socket poll waited `idle_s` for work, against the same step right after another step.
    `extra_s` is the median over repeats of the paired differences (sim.idle_cost)."""

    idle_s: float = Field(gt=0)
    tokens: int = Field(ge=1, description="prompt tokens of the timed prefill step")
    extra_s: float = Field(description="median added seconds of the step after the idle spell")
    extras_s: list[float] = Field(default_factory=list, description="every repeat")


class ProfileSamples(StrictFinite):
    """A whole profiling run: the setup it measured and every sample."""

    format: Literal[1] = 1
    hardware: str
    model: str | ModelSpec
    dtype: Literal["fp32", "fp16", "bf16", "fp8"]
    tp: int = Field(1, ge=1)
    page_size: int = Field(ge=1)
    kv_bytes_per_token: int = Field(ge=1, description="of the real engine, for the transfer model")
    engine_version: str
    created: str
    environment: dict[str, Any] = Field(default_factory=dict)
    steps: list[StepSample] = Field(default_factory=list)
    transfers: list[TransferSample] = Field(default_factory=list)
    streams: list[StreamSample] = Field(default_factory=list)
    idle: list[IdleSample] = Field(default_factory=list)

    @classmethod
    def load(cls, path: str | Path) -> ProfileSamples:
        data = read_json(path, "samples", SamplesError)
        try:
            return cls.model_validate(data)
        except ValidationError as e:
            raise SamplesError(f"{path}: invalid samples file: {format_validation_error(e)}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.model_dump_json(indent=1) + "\n")

    def write_csv(self, path: str | Path) -> None:
        """Steps and transfers in one flat table (kind 'transfer' rows carry nbytes)."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["kind", "label", *FEATURE_NAMES, "nbytes", "time_s", "repeats", "spread"])
            for s in self.steps:
                w.writerow([s.kind, s.label, *(s.features.get(k, 0) for k in FEATURE_NAMES), "",
                            f"{s.time_s:.9g}", len(s.times_s), f"{spread(s.times_s):.4f}"])
            for t in self.transfers:
                w.writerow(["transfer", f"{t.pages} pages", *([""] * len(FEATURE_NAMES)), t.nbytes,
                            f"{t.time_s:.9g}", len(t.times_s), f"{spread(t.times_s):.4f}"])


def spread(times: list[float]) -> float:
    """Interquartile range over median: how noisy one grid point was (0 = perfectly stable)."""
    if len(times) < 2:
        return 0.0
    q25, med, q75 = np.percentile(times, [25, 50, 75])
    return float((q75 - q25) / med) if med > 0 else 0.0
