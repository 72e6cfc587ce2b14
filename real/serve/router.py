"""The router: which strategy is in force, the requests in flight, and how they end.

Switching: `switch` builds a complete new Strategy object (validated against the engines before it
is used, so a bad name or params changes nothing) and swaps one reference. A request binds to the
strategy object in force when it is admitted and keeps it to the end, so requests already routed
finish under the old object while new ones go to the new one; the old object is dropped when its
last request ends. There is no lock: everything runs on the one event loop, and the swap is a
single assignment between awaits.

Ending: every admitted request ends in `Run.close()`, exactly once (normal end, stop string,
client disconnect, failure, shutdown). Unless the engine stream finished by itself, close sends
`release(req_id)` to every live engine, because a strategy may have touched several (a reservation
on the decode engine, a send on a prefill engine) and the router cannot know which any more once a
coroutine was cancelled mid-call; release is idempotent on an engine that holds nothing. The
releases run as background tasks so that close never awaits (it is called from `finally` blocks
of cancelled tasks) and `drain()` waits for them at shutdown.
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from core_api import strategy as registry
from core_api.types import Request, TokenChunk
from real.runtime import AsyncioRuntime
from real.serve.errors import APIError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class ActiveStrategy:
    """One strategy object with the name and params it was built from; `version` counts switches."""

    strategy: registry.Strategy
    name: str
    params: dict
    version: int
    in_flight: int = 0
    served: int = 0

    def describe(self) -> dict:
        return {"name": self.name, "params": self.params, "version": self.version,
                "in_flight": self.in_flight, "served": self.served}


class Run:
    """One admitted request: its strategy, its timings, and its single ending."""

    def __init__(self, router: Router, req: Request, active: ActiveStrategy, arrival: float) -> None:
        self.router, self.req, self.active = router, req, active
        self.arrival = arrival
        self.first_token: float | None = None
        self.last_token: float | None = None
        self.num_tokens = 0
        self.token_gaps: list[float] = []  # seconds between consecutive tokens (engine timestamps)
        self.finish_reason: str | None = None  # stop | length, as the stream or a stop string ended it
        self.status: str | None = None  # ok | failed | aborted (set by close at the latest)
        self.engines_done = False  # the engine stream finished: nothing left to release
        self._last_time: float | None = None
        self.closed = False
        self.tags: dict = {}
        active.in_flight += 1

    async def chunks(self) -> AsyncIterator[TokenChunk]:
        """The strategy's stream for this request. Closing it early releases the request."""
        gen = None
        try:
            gen = self.active.strategy.generate(self.req)
            async for chunk in gen:
                now = time.monotonic()
                if chunk.token_ids:
                    self.first_token = self.first_token or now
                    self.last_token = now
                    self.num_tokens += len(chunk.token_ids)
                    times = ([self._last_time] if self._last_time is not None else []) + list(chunk.times)
                    self.token_gaps += [b - a for a, b in itertools.pairwise(times)]
                    self._last_time = chunk.times[-1] if chunk.times else self._last_time
                if chunk.finished:
                    self.engines_done = True
                    self.status = self.status or "ok"
                    self.finish_reason = self.finish_reason or chunk.finish_reason
                yield chunk
        except (GeneratorExit, asyncio.CancelledError):
            self.status = self.status or "aborted"  # the consumer went away (disconnect, stop string)
            raise
        except BaseException:
            self.status = self.status or "failed"
            raise
        finally:
            try:
                close = getattr(gen, "aclose", None)
                if close is not None:
                    await close()
            finally:
                self.close()

    def close(self, status: str | None = None) -> None:
        """End the request (idempotent, never awaits): release it everywhere unless it ended by itself."""
        if self.closed:
            return
        self.closed = True
        self.status = self.status or status or "aborted"
        if not self.engines_done:
            self.router.release_everywhere(self.req.id)
        self.tags = self.active.strategy.pop_tags(self.req.id)
        self.active.in_flight -= 1
        self.active.served += 1
        self.router._finished(self)


class Router:
    def __init__(self, engines: list, name: str, params: dict | None = None, max_concurrent: int = 256,
                 runtime: AsyncioRuntime | None = None, on_finish: Callable[[Run], None] | None = None) -> None:
        self.engines = list(engines)
        self.runtime = runtime or AsyncioRuntime()
        origin = time.monotonic() - self.runtime.now()
        for e in self.engines:
            if hasattr(e, "time_origin"):
                e.time_origin = origin  # engine token times on the runtime clock, as run_workload does
        self.max_concurrent = max_concurrent
        self.on_finish = on_finish
        self.runs: dict[str, Run] = {}
        self.switches = 0
        self._background: set[asyncio.Task] = set()
        self.active = self._build(name, params or {}, version=1)

    def _build(self, name: str, params: dict, version: int) -> ActiveStrategy:
        strat = registry.build(name, self.engines, self.runtime, params)
        return ActiveStrategy(strat, name, dict(params), version)

    def switch(self, name: str | None = None, params: dict | None = None) -> tuple[ActiveStrategy, ActiveStrategy]:
        """Put a new strategy object in force for requests admitted from now on; raises StrategyError
        (and changes nothing) if it cannot be built. Returns (previous, current)."""
        name = name or self.active.name
        if params is None:
            params = self.active.params if name == self.active.name else {}
        new = self._build(name, params, self.active.version + 1)
        old, self.active = self.active, new
        self.switches += 1
        return old, new

    def admit(self, req: Request, arrival: float) -> Run:
        if len(self.runs) >= self.max_concurrent:
            raise APIError(429, f"too many concurrent requests: {len(self.runs)} in flight, the limit is "
                           f"{self.max_concurrent}; retry later", code="rate_limit_exceeded")
        if req.id in self.runs:
            raise APIError(400, f"request id {req.id} is already in flight")
        run = Run(self, req, self.active, arrival)
        self.runs[req.id] = run
        return run

    def _finished(self, run: Run) -> None:
        self.runs.pop(run.req.id, None)
        if self.on_finish is not None:
            try:
                self.on_finish(run)
            except Exception:
                log.exception("on_finish failed for %s", run.req.id)

    # -- releasing --------------------------------------------------------------------------
    def release_everywhere(self, req_id: str) -> None:
        for engine in self.engines:
            if getattr(engine, "down", None) is None:
                task = asyncio.ensure_future(self._release(engine, req_id))
                self._background.add(task)
                task.add_done_callback(self._background.discard)

    @staticmethod
    async def _release(engine, req_id: str) -> None:
        try:
            await engine.release(req_id)
        except Exception as exc:  # noqa: BLE001 - the engine may be gone; nothing else to do
            log.debug("release of %s on %s failed: %s", req_id, engine.id, exc)

    async def drain(self, timeout_s: float = 5.0) -> None:
        """Close what is still in flight and wait for the releases (shutdown)."""
        for run in list(self.runs.values()):
            run.close("aborted")
        if self._background:
            await asyncio.wait(list(self._background), timeout=timeout_s)
