"""A sequence: what one engine holds for one request's sub-request."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from core_api.types import Request


class _Name(str, Enum):
    """A closed set of names that still reads and prints as its plain string (in messages, JSON)."""

    def __str__(self) -> str:
        return self.value

    __format__ = str.__format__


class Kind(_Name):
    """What a sequence is for on this engine."""

    GENERATE = "generate"  # start_generate: prefill the rest of the prompt, then decode
    SEND = "send"  # remote_send: compute KV of prompt[:target], ship [begin, target), never sample
    RECEIVE = "receive"  # prep_recv: pages reserved for KV that another engine writes


class Status(_Name):
    """Where a sequence is in its life."""

    WAITING = "waiting"
    RUNNING = "running"
    RECEIVING = "receiving"
    SENT = "sent"
    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"


GENERATE, SEND, RECEIVE = Kind.GENERATE, Kind.SEND, Kind.RECEIVE
WAITING, RUNNING, RECEIVING, SENT, FINISHED, FAILED, ABORTED = Status


@dataclass(slots=True, eq=False)
class Sequence:
    req: Request
    kind: Kind
    target: int  # prompt tokens whose KV must exist before sampling (GENERATE) or finishing (SEND/RECEIVE)
    begin: int = 0  # SEND: first token to ship; RECEIVE: first reserved token (= matched length)
    pages: list[int] = field(default_factory=list)
    num_computed: int = 0  # leading tokens whose KV is in `pages`
    num_registered: int = 0  # leading full pages published to the prefix cache
    num_cached: int = 0  # tokens the prefix cache served at admission
    output: list[int] = field(default_factory=list)
    token_times: list[float] = field(default_factory=list)
    status: Status = WAITING
    finish_reason: str | None = None
    deadline: float = float("inf")  # RECEIVE: when an unused reservation is reclaimed
    reserved: int = 0  # RECEIVE: pages still counted as reserved (awaiting incoming KV)
    matched: bool = False  # prefix cache consulted (once, at first admission)
    handle: object = None  # the backend's notification object (stream, transfer)
    # Real engines: the connection that created the sequence (only it may continue or release the
    # request), and for a reservation the unguessable capability a sender must present to write
    # KV into it (issued by the receiver with its KVAddr). The simulator leaves both unset.
    owner: object = None
    kv_token: str = ""
    # The prompt's length, read on every scheduling decision: kept as a plain int.
    prompt_len: int = field(init=False)

    def __post_init__(self) -> None:
        self.prompt_len = self.req.prompt.shape[0]

    @property
    def id(self) -> str:
        return self.req.id

    @property
    def known_len(self) -> int:
        """Tokens whose ids are known: the prompt (or its target) plus sampled outputs."""
        if self.kind == GENERATE:
            return self.prompt_len + len(self.output)
        return self.target

    @property
    def prefill_remaining(self) -> int:
        """Prompt tokens still to compute (0 once decoding)."""
        return max(0, self.target - self.num_computed)

    def token_ids(self, start: int, stop: int) -> np.ndarray:
        """Input ids of positions [start, stop): prompt, then sampled outputs."""
        n = self.prompt_len
        if stop <= n:
            return self.req.prompt[start:stop]
        head = self.req.prompt[start:n] if start < n else self.req.prompt[:0]
        tail = np.asarray(self.output[max(0, start - n) : stop - n], dtype=np.int32)
        return np.concatenate([head, tail])
