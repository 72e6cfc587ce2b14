"""RecordingEngine: an Engine wrapper that logs every sub-request call a strategy makes.

Tests use it to check that a strategy issues exactly the calls it promises (which engine, which
method, which prompt range, in which order); diagnostics use it to see how requests were split.
It wraps anything that follows the Engine protocol, so it works on the simulator and on real
engines alike, and it changes nothing about the calls it forwards. Library code never prints:
read `log` (or `calls_for`) after the run.
"""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from core_api.engine import Engine, EngineLoad
from core_api.types import KVAddr, Request, TokenChunk


@dataclass(slots=True)
class Call:
    """One sub-request call as issued. Positions are absolute (resolved against the prompt);
    `result` is filled in when the call completes (matched length, tokens streamed, ...)."""

    engine: str
    method: str  # prep_recv, remote_send, start_generate, release
    req_id: str
    args: dict = field(default_factory=dict)
    time: float | None = None
    done: bool = False
    result: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.engine)


class RecordingEngine:
    """Forwards every Engine call to `inner` and appends a Call to a (possibly shared) log."""

    def __init__(self, inner: Engine, log: list[Call] | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.inner = inner
        self.id = inner.id
        self.log: list[Call] = log if log is not None else []
        self._clock = clock

    def _record(self, method: str, req_id: str, **args: Any) -> Call:
        call = Call(self.id, method, req_id, args, self._clock() if self._clock else None)
        self.log.append(call)
        return call

    async def prep_recv(self, req: Request, end: int | None = None) -> tuple[KVAddr, int]:
        call = self._record("prep_recv", req.id, end=req.resolve(end))
        kv_addr, matched = await self.inner.prep_recv(req, end)
        call.done, call.result = True, {"matched": matched, "begin": kv_addr.begin, "end": kv_addr.end,
                                        "pages": len(kv_addr.page_ids)}
        return kv_addr, matched

    async def remote_send(self, req: Request, kv_addr: KVAddr, dst: str, begin: int,
                          end: int | None = None) -> None:
        call = self._record("remote_send", req.id, dst=dst, begin=begin, end=req.resolve(end))
        await self.inner.remote_send(req, kv_addr, dst, begin, end)
        call.done = True

    async def start_generate(self, req: Request, begin: int = 0) -> AsyncIterator[TokenChunk]:
        call = self._record("start_generate", req.id, begin=req.resolve(begin))
        tokens = 0
        async for chunk in self.inner.start_generate(req, begin):
            tokens += len(chunk.token_ids)
            call.result["tokens"] = tokens
            yield chunk
        call.done = True

    async def release(self, req_id: str) -> None:
        self._record("release", req_id)
        await self.inner.release(req_id)

    async def cached_prefix_len(self, req: Request) -> int:
        return await self.inner.cached_prefix_len(req)

    def load(self) -> EngineLoad:
        return self.inner.load()

    @property
    def healthy(self) -> bool:
        return self.inner.healthy


def wrap_all(engines: Iterable[Engine], clock: Callable[[], float] | None = None) -> list[RecordingEngine]:
    """Wrap each engine; all wrappers share one log (`wrappers[0].log`), so order across engines shows."""
    log: list[Call] = []
    return [RecordingEngine(e, log, clock) for e in engines]


def calls_for(log: Iterable[Call], req_id: str) -> list[Call]:
    """The calls of one request, in the order they were issued."""
    return [c for c in log if c.req_id == req_id]
