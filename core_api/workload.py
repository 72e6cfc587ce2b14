"""Seeded synthetic workloads, and the Workload type that trace loaders also build.

A spec (pydantic, validated at the edge) says how arrivals, prompt and output lengths and shared
prefixes are distributed; `generate` turns it into a Workload with numpy only. Each component
(arrivals, prompt lengths, output lengths, prefix groups, token ids) draws from its own child
stream of ``SeedSequence(spec.seed)``: sweeping the rate with a fixed seed keeps every prompt and
length the same and only scales the arrival times, so the points of a sweep are comparable.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Iterator, Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from core_api.request_stream import RequestStream
from core_api.types import MAX_REQUEST_TOKENS, Request

__all__ = ["ArrivalSpec", "LengthDist", "PrefixSpec", "Workload", "WorkloadSpec", "generate"]


class _Spec(BaseModel):
    # Typos are errors, not silently ignored keys; "Infinity" keeps rate=inf through JSON.
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="strings")


class LengthDist(_Spec):
    """A distribution of token counts, rounded to integers and clamped to [min, max] (max: at most
    core_api.types.MAX_REQUEST_TOKENS, where an unbounded tail stops).

    Parameters by kind: fixed(value); uniform(low, high), both inclusive; normal(mean, std);
    lognormal(mean, sigma), where mean is the mean length and sigma the std of its log; zipf(alpha,
    high): P(k) ~ k**-alpha on 1..high. ``min`` is at least 1, so a length is never 0.
    """

    kind: Literal["fixed", "uniform", "normal", "lognormal", "zipf"] = "fixed"
    value: int | None = Field(None, ge=1, le=MAX_REQUEST_TOKENS)
    low: int | None = Field(None, ge=1, le=MAX_REQUEST_TOKENS)
    high: int | None = Field(None, ge=1, le=MAX_REQUEST_TOKENS)
    mean: float | None = Field(None, gt=0, le=MAX_REQUEST_TOKENS, allow_inf_nan=False)
    std: float | None = Field(None, ge=0, allow_inf_nan=False)
    sigma: float | None = Field(None, ge=0, allow_inf_nan=False)
    alpha: float | None = Field(None, gt=0, allow_inf_nan=False)
    min: int = Field(1, ge=1, le=MAX_REQUEST_TOKENS)
    max: int | None = Field(None, ge=1, le=MAX_REQUEST_TOKENS)

    @model_validator(mode="after")
    def _params(self) -> LengthDist:
        need = {"fixed": ("value",), "uniform": ("low", "high"), "normal": ("mean", "std"),
                "lognormal": ("mean", "sigma"), "zipf": ("alpha", "high")}[self.kind]
        missing = [p for p in need if getattr(self, p) is None]
        if missing:
            raise ValueError(f"a {self.kind} length needs {missing}")
        if self.kind == "uniform" and self.low > self.high:
            raise ValueError(f"uniform length needs low <= high, got low={self.low} high={self.high}")
        if self.max is not None and self.max < self.min:
            raise ValueError(f"length max={self.max} is below min={self.min}")
        return self

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n lengths as int64, all >= 1."""
        if self.kind == "fixed":
            x = np.full(n, self.value, dtype=np.float64)
        elif self.kind == "uniform":
            x = rng.integers(self.low, self.high, size=n, endpoint=True).astype(np.float64)
        elif self.kind == "normal":
            x = rng.normal(self.mean, self.std, size=n)
        elif self.kind == "lognormal":
            x = rng.lognormal(math.log(self.mean) - self.sigma**2 / 2, self.sigma, size=n)
        else:  # bounded zipf by inverse CDF: numpy's zipf is unbounded and needs alpha > 1
            cdf = np.cumsum(np.arange(1, self.high + 1, dtype=np.float64) ** -self.alpha)
            x = np.searchsorted(cdf / cdf[-1], rng.random(n), side="right") + 1.0
        hi = self.max if self.max is not None else MAX_REQUEST_TOKENS  # a long tail stops at the ceiling
        return np.clip(np.rint(x), self.min, hi).astype(np.int64)


class ArrivalSpec(_Spec):
    """Inter-arrival gaps: poisson (exponential gaps) or gamma with a coefficient of variation.

    ``rate`` is requests per second; ``inf`` puts every request at t = 0 (a burst / offline run).
    cv > 1 is burstier than Poisson, cv < 1 more regular; gamma with cv = 1 equals poisson.
    """

    process: Literal["poisson", "gamma"] = "poisson"
    rate: float = Field(1.0, gt=0)
    cv: float = Field(1.0, gt=0, allow_inf_nan=False)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """n sorted arrival times; the first request arrives at 0."""
        if math.isinf(self.rate):
            return np.zeros(n)
        shape = 1.0 if self.process == "poisson" else 1.0 / self.cv**2
        # Unit-mean gaps scaled by 1/rate: a rate sweep with one seed scales the same arrivals.
        gaps = rng.standard_gamma(shape, size=n - 1) / shape / self.rate
        return np.concatenate([[0.0], np.cumsum(gaps)])


class PrefixSpec(_Spec):
    """Shared prefixes: a `fraction` of requests start with one of `num_groups` prefixes.

    A prefixed prompt is the group's `prefix_len` tokens followed by the request's own tokens,
    whose count is drawn from the spec's prompt length (like a system prompt plus a question).
    Groups are picked uniformly or zipf-ly (group g has weight (g + 1) ** -alpha).
    """

    num_groups: int = Field(1, ge=1)
    prefix_len: int = Field(..., ge=1)
    fraction: float = Field(1.0, ge=0, le=1)
    choice: Literal["uniform", "zipf"] = "uniform"
    alpha: float = Field(1.0, gt=0, allow_inf_nan=False)


class WorkloadSpec(_Spec):
    """Everything that defines a synthetic workload; equal specs give identical workloads."""

    name: str = "synthetic"
    num_requests: int = Field(..., ge=1)
    arrival: ArrivalSpec = ArrivalSpec()
    prompt_len: LengthDist = LengthDist(kind="fixed", value=512)
    output_len: LengthDist = LengthDist(kind="fixed", value=128)
    prefix: PrefixSpec | None = None
    vocab_size: int = Field(32000, ge=2, le=np.iinfo(np.int32).max)
    temperature: float = Field(0.0, ge=0, allow_inf_nan=False)
    seed: int = Field(0, ge=0)


class Workload:
    """Requests sorted by arrival time, plus where they came from (a spec, a trace name).

    Derived workloads (slice, subsample) share Request objects and prompt arrays with their
    source; prompts are read-only numpy arrays, so treat requests as immutable inputs to a run.
    """

    def __init__(self, requests: Iterable[Request], name: str = "workload", spec: BaseModel | None = None):
        self.requests: list[Request] = sorted(requests, key=lambda r: r.arrival_time)
        self.name = name
        self.spec = spec

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[Request]:
        return iter(self.requests)

    def __getitem__(self, i: int) -> Request:
        return self.requests[i]

    def __repr__(self) -> str:
        return f"Workload({self.name!r}, {len(self)} requests, mean rate {self.mean_rate:.3g}/s)"

    @property
    def arrival_times(self) -> np.ndarray:
        return np.fromiter((r.arrival_time for r in self.requests), np.float64, len(self.requests))

    @property
    def mean_rate(self) -> float:
        """(n - 1) / (last - first arrival): inf for a burst, nan with fewer than 2 requests."""
        t = self.arrival_times
        if t.size < 2:
            return float("nan")
        span = t[-1] - t[0]
        return (t.size - 1) / span if span > 0 else float("inf")

    @classmethod
    def from_lengths(
        cls,
        arrivals: Sequence[float],
        prompt_lens: Sequence[int],
        output_lens: Sequence[int],
        rng: np.random.Generator,
        vocab_size: int = 32000,
        prefix_ids: Sequence[Sequence[int]] | None = None,
        block_size: int = 512,
        temperature: float = 0.0,
        name: str = "trace",
        spec: BaseModel | None = None,
        lazy: bool = False,
    ) -> Workload:
        """Build requests from per-request lengths (what a trace holds), with random token ids.

        ``prefix_ids[i]`` lists hash ids of ``block_size``-token blocks at the start of prompt i
        (as in Mooncake-style traces): equal ids give equal tokens, so shared blocks hit a prefix
        cache; tokens past the blocks are the request's own (core_api.request_stream). ``lazy``:
        build the requests as they are iterated, a chunk at a time, instead of holding them all
        (a simulation of millions of requests); the requests are the same either way.
        """
        stream = RequestStream(arrivals, prompt_lens, output_lens, rng, vocab_size, prefix_ids, block_size,
                               temperature)
        return LazyWorkload(stream, name=name, spec=spec) if lazy else cls(stream, name=name, spec=spec)

    def scaled_to_rate(self, rate: float) -> Workload:
        """Same requests with arrival gaps rescaled so mean_rate == rate (inf: all at the first)."""
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        t = self.arrival_times
        if len(self) < 2 or math.isinf(rate):
            factor = 0.0 if math.isinf(rate) else 1.0
        elif math.isinf(self.mean_rate):
            raise ValueError("cannot rescale a workload whose requests all arrive at once")
        else:
            factor = self.mean_rate / rate
        moved = [dataclasses.replace(r, arrival_time=float(t[0] + (a - t[0]) * factor),
                                     sampling=dataclasses.replace(r.sampling))
                 for r, a in zip(self.requests, t)]
        return Workload(moved, name=f"{self.name}@{rate:g}rps", spec=self.spec)

    def slice(self, start: int, stop: int | None = None) -> Workload:
        """Requests [start:stop) in arrival order, arrival times kept."""
        return Workload(self.requests[start:stop], name=f"{self.name}[{start}:{stop}]", spec=self.spec)

    def subsample(self, n: int, rng: np.random.Generator) -> Workload:
        """n requests drawn without replacement, arrival times kept (so the rate drops)."""
        if not 0 <= n <= len(self):
            raise ValueError(f"cannot subsample {n} of {len(self)} requests")
        keep = np.sort(rng.choice(len(self), size=n, replace=False))
        return Workload([self.requests[i] for i in keep], name=f"{self.name}~{n}", spec=self.spec)


class LazyWorkload(Workload):
    """A generated workload whose requests are built as they are iterated (RequestStream), so a
    simulation of millions of requests holds only those in flight. Iterating is cheap and gives
    the same requests every time; `requests` materializes them all."""

    def __init__(self, stream: RequestStream, name: str = "workload", spec: BaseModel | None = None):
        self._stream, self.name, self.spec = stream, name, spec

    @property
    def requests(self) -> list[Request]:  # type: ignore[override]
        return list(self._stream)

    def __len__(self) -> int:
        return len(self._stream)

    def __iter__(self) -> Iterator[Request]:
        return iter(self._stream)

    def __getitem__(self, i: int) -> Request:
        return self._stream[i]

    @property
    def arrival_times(self) -> np.ndarray:
        return self._stream.arrival_times


def generate(spec: WorkloadSpec, lazy: bool = False) -> Workload:
    """Draw the workload a spec describes (numpy Generators seeded from spec.seed only); `lazy`
    builds requests as they are iterated (LazyWorkload), with the same result."""
    r_arr, r_prompt, r_out, r_prefix, r_tok = (
        np.random.Generator(np.random.PCG64(s)) for s in np.random.SeedSequence(spec.seed).spawn(5))
    n = spec.num_requests
    arrivals = spec.arrival.sample(r_arr, n)
    prompt_lens = spec.prompt_len.sample(r_prompt, n)
    output_lens = spec.output_len.sample(r_out, n)
    prefix_ids = None
    block = 1
    p = spec.prefix
    if p is not None:
        weights = np.ones(p.num_groups) if p.choice == "uniform" else \
            np.arange(1, p.num_groups + 1, dtype=np.float64) ** -p.alpha
        has = r_prefix.random(n) < p.fraction
        group = r_prefix.choice(p.num_groups, size=n, p=weights / weights.sum())
        prompt_lens = prompt_lens + np.where(has, p.prefix_len, 0)
        prefix_ids = [[int(g)] if h else [] for g, h in zip(group, has)]
        block = p.prefix_len
    return Workload.from_lengths(arrivals, prompt_lens, output_lens, r_tok, spec.vocab_size,
                                 prefix_ids=prefix_ids, block_size=block,
                                 temperature=spec.temperature, name=spec.name, spec=spec, lazy=lazy)
