"""What every trace loader shares: options, bad-line handling, selection, building the Workload.

A loader parses its file into plain per-request arrays (arrival seconds, prompt and output
lengths, optional prefix block ids); `build_workload` then applies the options *on the arrays*
(time window, slice, subsample, cap, rate scaling) and only afterwards draws token ids, so
loading a 20k-request trace to run 200 of them costs 200 prompts, not 20k.

Bad input is never silently absorbed: a malformed line raises TraceError naming the file and
the line, unless ``skip_bad_lines`` is set, in which case the line is skipped, counted in
``TraceWorkload.skipped`` and reported once with a TraceWarning (library code warns, it does
not print). Rows that are well-formed but unusable (zero output tokens in BurstGPT's failed
requests, one-turn ShareGPT conversations) are dropped by rule, counted in ``dropped``.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core_api.types import MAX_REQUEST_TOKENS, Request
from core_api.workload import ArrivalSpec, Workload

__all__ = ["BadLines", "RowError", "SkippedLine", "TraceError", "TraceOptions", "TraceWarning", "TraceWorkload",
           "build_workload", "select"]

_SHOW = 5  # skipped lines quoted in the warning


class TraceError(ValueError):
    """A trace file cannot be read; the message names the file and, for bad rows, the line."""


class RowError(ValueError):
    """One row is malformed; loaders turn it into TraceError (with the line) or a skip."""


class TraceWarning(UserWarning):
    """Lines of a trace were skipped because ``skip_bad_lines`` was set."""


@dataclass(frozen=True, slots=True)
class SkippedLine:
    line: int
    reason: str


class TraceOptions(BaseModel):
    """How to cut and time a trace. Applied in this order: window, slice, subsample, cap, rate.

    - ``start_s``/``end_s``: keep requests arriving in [start_s, end_s) seconds after the first.
    - ``start``/``stop``: then keep requests [start:stop) in arrival order.
    - ``subsample``: then draw that many at random (seeded), arrival times kept.
    - ``max_requests``: then keep the first n.
    - ``rate``: finally rescale arrival gaps so the mean rate is exactly ``rate`` req/s.
    Arrival times are rebased so the first kept request arrives at 0. ``arrival`` synthesises
    arrivals for formats without timestamps (ShareGPT). ``seed`` drives subsampling, synthetic
    arrivals and the random token ids of prompts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_s: float | None = Field(None, ge=0, allow_inf_nan=False)
    end_s: float | None = Field(None, gt=0, allow_inf_nan=False)
    start: int = Field(0, ge=0)
    stop: int | None = Field(None, ge=0)
    subsample: int | None = Field(None, ge=1)
    max_requests: int | None = Field(None, ge=1)
    rate: float | None = Field(None, gt=0)
    arrival: ArrivalSpec = ArrivalSpec()
    seed: int = Field(0, ge=0)
    vocab_size: int = Field(32000, ge=2, le=np.iinfo(np.int32).max)
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False)
    skip_bad_lines: bool = False

    @model_validator(mode="after")
    def _order(self) -> TraceOptions:
        if self.start_s is not None and self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"end_s={self.end_s} must be above start_s={self.start_s}")
        if self.stop is not None and self.stop <= self.start:
            raise ValueError(f"stop={self.stop} must be above start={self.start}")
        return self


class TraceWorkload(Workload):
    """A Workload that remembers what loading it skipped (bad lines) and dropped (by rule)."""

    def __init__(self, requests, name: str, spec: BaseModel | None = None,
                 skipped: Sequence[SkippedLine] = (), dropped: dict[str, int] | None = None,
                 source_requests: int = 0):
        super().__init__(requests, name=name, spec=spec)
        self.skipped = list(skipped)
        self.dropped = dict(dropped or {})
        self.source_requests = source_requests  # usable requests in the file, before selection


class BadLines:
    """Raise on the first bad line, or collect them when skipping is on."""

    def __init__(self, path: str, skip: bool):
        self.path, self.skip = path, skip
        self.lines: list[SkippedLine] = []

    def __call__(self, line: int, reason: str) -> None:
        if not self.skip:
            raise TraceError(f"{self.path}:{line}: {reason} "
                             f"(set skip_bad_lines / --skip-bad-lines to skip such lines)")
        self.lines.append(SkippedLine(line, reason))

    def warn(self) -> None:
        if self.lines:
            shown = "; ".join(f"line {s.line}: {s.reason}" for s in self.lines[:_SHOW])
            more = f"; and {len(self.lines) - _SHOW} more" if len(self.lines) > _SHOW else ""
            warnings.warn(TraceWarning(f"{self.path}: skipped {len(self.lines)} malformed line(s): "
                                       f"{shown}{more}"), stacklevel=3)


def read_text(path: Path) -> str:
    """The whole file (BOM dropped, line endings kept for csv); unreadable -> TraceError."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read()
    except OSError as exc:
        raise TraceError(f"{path}: cannot read trace: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"{path}: not UTF-8 text: {exc}") from None


def positive_int(value: object, what: str, allow_zero: bool = True) -> int:
    """A token count from text or JSON: an integer >= 0 (or >= 1); ValueError says which field."""
    if isinstance(value, bool):
        raise RowError(f"{what} is not a number: {value!r}")
    if isinstance(value, str):
        value = value.strip()
        try:
            value = int(value) if value.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise RowError(f"{what} is not a number: {value!r}") from None
    if not isinstance(value, (int, float)) or isinstance(value, float) and not value.is_integer():
        raise RowError(f"{what} is not an integer: {value!r}")
    n = int(value)
    if n < (0 if allow_zero else 1):
        raise RowError(f"{what} must be >= {0 if allow_zero else 1}, got {n}")
    if n > MAX_REQUEST_TOKENS:
        raise RowError(f"{what} must be <= {MAX_REQUEST_TOKENS}, got {n}")
    return n


def finite_float(value: object, what: str) -> float:
    """A finite number from text or JSON; ValueError names the field."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise RowError(f"{what} is not a number: {value!r}")
    try:
        x = float(value)
    except ValueError:
        raise RowError(f"{what} is not a number: {value!r}") from None
    if not math.isfinite(x):
        raise RowError(f"{what} is not finite: {value!r}")
    return x


def select(arrivals: np.ndarray, opts: TraceOptions) -> np.ndarray:
    """Indices (into arrival-sorted arrays) of the requests the options keep, in arrival order."""
    idx = np.arange(arrivals.size)
    if arrivals.size:
        rel = arrivals - arrivals[0]
        lo = opts.start_s if opts.start_s is not None else -math.inf
        hi = opts.end_s if opts.end_s is not None else math.inf
        idx = idx[(rel >= lo) & (rel < hi)]
    idx = idx[opts.start:opts.stop]
    if opts.subsample is not None:
        if opts.subsample > idx.size:
            raise TraceError(f"cannot subsample {opts.subsample} of {idx.size} requests")
        rng = np.random.default_rng(np.random.SeedSequence(opts.seed).spawn(3)[0])
        idx = np.sort(rng.choice(idx, size=opts.subsample, replace=False))
    if opts.max_requests is not None:
        idx = idx[:opts.max_requests]
    return idx


def retime(arrivals: np.ndarray, rate: float | None) -> np.ndarray:
    """Rebase to 0 and, with a rate, scale gaps so (n - 1) / span == rate exactly."""
    t = arrivals - arrivals[0] if arrivals.size else arrivals
    if rate is None or t.size < 2:
        return t
    if t[-1] <= 0:
        raise TraceError("cannot rescale a trace whose requests all arrive at the same time")
    return t * ((t.size - 1) / t[-1] / rate)


def token_rng(opts: TraceOptions) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(opts.seed).spawn(3)[1])


def arrival_rng(opts: TraceOptions) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(opts.seed).spawn(3)[2])


def build_workload(name: str, arrivals: Sequence[float], prompt_lens: Sequence[int],
                   output_lens: Sequence[int], opts: TraceOptions, bad: BadLines,
                   prefix_ids: Sequence[Sequence[int]] | None = None, block_size: int = 512,
                   dropped: dict[str, int] | None = None, spec: BaseModel | None = None,
                   prompts: Sequence[np.ndarray] | None = None) -> TraceWorkload:
    """Sort by arrival, apply the options, draw tokens (or use given `prompts`), warn on skips."""
    t = np.asarray(arrivals, dtype=np.float64)
    order = np.argsort(t, kind="stable")
    keep = order[select(t[order], opts)]
    t_kept = retime(t[keep], opts.rate)
    plen = np.asarray(prompt_lens, dtype=np.int64)[keep]
    olen = np.asarray(output_lens, dtype=np.int64)[keep]
    bad.warn()
    meta = {"skipped": bad.lines, "dropped": dropped, "source_requests": int(t.size)}
    if prompts is not None:  # real token ids (a tokenizer was given): no random tokens
        from core_api.types import SamplingParams

        reqs = [Request(f"r{k}", np.asarray(prompts[i], dtype=np.int32),
                        SamplingParams(max_tokens=int(o), temperature=opts.temperature, ignore_eos=True),
                        float(a))
                for k, (i, a, o) in enumerate(zip(keep.tolist(), t_kept, olen))]
        return TraceWorkload(reqs, name=name, spec=spec, **meta)
    ids = [prefix_ids[i] for i in keep.tolist()] if prefix_ids is not None else None
    w = Workload.from_lengths(t_kept, plen, olen, token_rng(opts), opts.vocab_size, prefix_ids=ids,
                              block_size=block_size, temperature=opts.temperature, name=name, spec=spec)
    return TraceWorkload(w.requests, name=name, spec=spec, **meta)
