"""The token stream between an engine and the router, both ends.

Engine side (`StreamOut`): after each step the worker queues every streaming sequence's new token
into one `chunks` message per router connection, not one message per sequence, and sends the
queue at once; with `stream_interval_s` > 0, once its oldest token is that old or a stream starts
or ends. Token times are stamped per step either way, so no metric moves; what drops is the
router's work per token (several-fold), which matters where the router shares the engines' cores.

Router side (`StreamBuffer`): what arrived for one start_generate stream and was not consumed
yet. The consumer awaits a future only when the buffer is empty, so tokens that pile up while
it is busy cost it one wake-up and come out as one TokenChunk.
"""
from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

from core_api.sequence import Sequence
from real import protocol as p


@dataclass(slots=True)
class Caller:
    """Who to answer: the router connection and its call id."""

    ident: bytes
    call_id: int


class Stream(Caller):
    """A start_generate in progress."""


class StreamOut:
    def __init__(self, interval_s: float, send: Callable[[bytes, p.Chunks], None]) -> None:
        self.interval_s, self.send = interval_s, send
        self.pending: dict[bytes, p.Chunks] = {}  # per router connection
        self.since = 0.0  # when the oldest pending token was produced
        # What was streamed (the engine's stats: calibration prices it as sim.stream_cost does).
        self.steps = self.tokens = self.messages = 0

    def add(self, sampled: list[Sequence], finished: list[Sequence]) -> None:
        """Queue this step's token of every streaming sequence; send as the interval says."""
        done = {id(s) for s in finished}
        out, urgent = self.pending, not self.interval_s
        if not out:
            self.since = time.monotonic()
        queued = self.tokens
        for seq in sampled:
            handle = seq.handle
            if not isinstance(handle, Stream):
                continue
            self.tokens += 1
            msg = out.get(handle.ident)
            if msg is None:
                msg = out[handle.ident] = p.Chunks(op="chunks", ids=[], tokens=[], times=[])
            msg.ids.append(handle.call_id)
            msg.tokens.append(seq.output[-1])
            msg.times.append(seq.token_times[-1])
            if id(seq) in done:
                msg.finished.append(handle.call_id)
                msg.reasons.append(seq.finish_reason)
                urgent = True
            elif len(seq.output) == 1:
                urgent = True
        self.steps += self.tokens > queued
        if urgent or time.monotonic() - self.since >= self.interval_s:
            self.flush()

    def flush(self) -> None:
        out, self.pending = self.pending, {}
        self.messages += len(out)
        for ident, msg in out.items():
            self.send(ident, msg)


class StreamBuffer:
    __slots__ = ("error", "finished", "reason", "times", "tokens", "waiter")

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.times: list[float] = []
        self.finished, self.reason = False, None
        self.error: Exception | None = None
        self.waiter: asyncio.Future | None = None

    def wake(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    def fail(self, exc: Exception) -> None:
        self.error = self.error or exc
        self.wake()
