"""Plain data that crosses the strategy/engine boundary.

Hot objects are slotted dataclasses (they live inside the simulator's loops); configs at the
edges are pydantic models elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

# Below this temperature sampling is greedy: dividing logits by a tiny temperature overflows
# them to inf and the softmax to NaN (vLLM uses the same floor).
MIN_TEMPERATURE = 1e-5
# Prompt or output tokens of one request read from a trace or drawn from a workload spec: above
# any model's context, so a count past it is a typo or a hostile file (its prompt alone would take
# 64 MiB), refused (traces) or clipped (a distribution's unbounded tail) before any array is made.
MAX_REQUEST_TOKENS = 1 << 24


@dataclass(slots=True)
class SamplingParams:
    """How tokens are drawn. temperature below MIN_TEMPERATURE (0, the default, and what tests
    use) means greedy."""

    max_tokens: int = 16
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    # The simulator has no vocabulary; a real engine stops at EOS unless told to ignore it.
    ignore_eos: bool = False

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.temperature < float("inf"):  # also refuses NaN
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature < MIN_TEMPERATURE


@dataclass(slots=True, eq=False)
class Request:
    """One user request. `id` is the sequence id tying sub-requests together on an engine."""

    id: str
    prompt: np.ndarray  # int32 token ids
    sampling: SamplingParams = field(default_factory=SamplingParams)
    arrival_time: float = 0.0
    # Workload bookkeeping only (which shared prefix the prompt starts with); engines never read it.
    prefix_group: int | None = None
    prefix_len: int = 0
    # Chained page hashes by page size, filled lazily by core_api.hashing and shared by all engines.
    _page_hashes: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        prompt = np.asarray(self.prompt)
        if prompt.ndim != 1:
            raise ValueError(f"request {self.id}: prompt must be a 1-D array of token ids")
        if prompt.size == 0:
            raise ValueError(f"request {self.id}: prompt is empty")
        if prompt.dtype != np.int32:
            if prompt.size and (prompt.min() < 0 or prompt.max() > np.iinfo(np.int32).max):
                raise ValueError(f"request {self.id}: token ids must fit in int32")
            prompt = prompt.astype(np.int32)
        self.prompt = prompt

    @property
    def prompt_len(self) -> int:
        return int(self.prompt.shape[0])

    def resolve(self, index: int | None) -> int:
        """Python-style prompt index -> absolute position: None = whole prompt, -1 = all but last."""
        n = self.prompt_len
        if index is None:
            return n
        pos = index + n if index < 0 else index
        if not 0 <= pos <= n:
            raise ValueError(f"request {self.id}: index {index} outside a prompt of {n} tokens")
        return pos


@dataclass(slots=True, frozen=True)
class KVAddr:
    """Where a receiver wants KV written: its page ids for tokens [begin, end) of the prompt."""

    engine_id: str
    page_ids: tuple[int, ...]
    page_size: int
    begin: int
    end: int
    # The receiver's capability for this reservation: KV writes without it are refused (real
    # engines; the simulator leaves it empty). Opaque to routers and strategies, which pass it on.
    token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        need = -(-(self.end - self.begin) // self.page_size) if self.end > self.begin else 0
        if self.begin % self.page_size:
            raise ValueError(f"KVAddr begin {self.begin} is not page aligned (page size {self.page_size})")
        if len(self.page_ids) != need:
            raise ValueError(f"KVAddr holds {len(self.page_ids)} pages, tokens [{self.begin}, {self.end}) need {need}")


@dataclass(slots=True)
class TokenChunk:
    """Tokens from one stream with the time each was produced (seconds on the runtime's clock)."""

    token_ids: list[int]
    times: list[float]
    finished: bool = False
    finish_reason: str | None = None  # "length", "stop", "abort"


Status = Literal["ok", "failed", "aborted"]
_DROPPED = ()  # what a record's token lists become once dropped: empty, and adding to it fails loudly


@dataclass(slots=True)
class RequestRecord:
    """Raw timestamps of one request; metrics are computed from these after the run."""

    request_id: str
    arrival_time: float
    prompt_len: int
    max_tokens: int
    token_times: list[float] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    finish_time: float | None = None
    status: Status = "ok"
    reason: str | None = None
    tags: dict = field(default_factory=dict)
    # (output_len, first token time, last token time) once drop_tokens() let the lists go.
    summary: tuple[int, float | None, float | None] | None = None

    @property
    def first_token_time(self) -> float | None:
        if self.summary is not None:
            return self.summary[1]
        return self.token_times[0] if self.token_times else None

    @property
    def last_token_time(self) -> float | None:
        if self.summary is not None:
            return self.summary[2]
        return self.token_times[-1] if self.token_times else None

    @property
    def output_len(self) -> int:
        return self.summary[0] if self.summary is not None else len(self.token_times)

    def add(self, chunk: TokenChunk) -> None:
        self.token_ids.extend(chunk.token_ids)
        self.token_times.extend(chunk.times)

    def drop_tokens(self) -> None:
        """Keep what the per-request metrics need (count, first and last token time) and let the
        per-token lists go: a run of millions of requests cannot hold every token's time."""
        self.summary = (self.output_len, self.first_token_time, self.last_token_time)
        self.token_times = self.token_ids = _DROPPED  # type: ignore[assignment]

    def to_dict(self, token_ids: bool = False) -> dict:
        """The record as JSON data; `token_ids` adds the generated ids (real runs: the simulator's
        are placeholders, and would only bloat its results)."""
        out = {
            "request_id": self.request_id,
            "arrival_time": self.arrival_time,
            "prompt_len": self.prompt_len,
            "max_tokens": self.max_tokens,
            "output_len": self.output_len,
            **({"token_times": self.token_times} if self.summary is None else
               {"first_token_time": self.summary[1], "last_token_time": self.summary[2]}),
            "finish_time": self.finish_time,
            "status": self.status,
            "reason": self.reason,
            "tags": self.tags,
        }
        if token_ids:
            out["token_ids"] = self.token_ids
        return out
