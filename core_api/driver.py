"""Serving one request through a strategy and recording it: the same code for both backends.

The simulator's cluster and the real cluster both run every request of a workload through here,
so a request's record (tokens, times, failure reason, routing tags) and what happens to a failed
request (released on every live engine, so nothing it held can leak) mean the same thing in a
simulated and a real run.
"""
from __future__ import annotations

from collections.abc import Sequence

from core_api.engine import Engine
from core_api.errors import EngineCallError
from core_api.hashing import forget_page_keys
from core_api.runtime import Runtime
from core_api.strategy import Strategy
from core_api.types import Request, RequestRecord


async def serve_request(strategy: Strategy, engines: Sequence[Engine], req: Request, record: RequestRecord,
                        runtime: Runtime) -> None:
    """Run `req` through the strategy into `record`; one request's failure is recorded, never raised."""
    try:
        async for chunk in strategy.generate(req):
            record.add(chunk)
    except Exception as exc:  # noqa: BLE001 - one request's failure must not stop the run
        record.status, record.reason = "failed", f"{type(exc).__name__}: {exc}"
        for engine in engines:  # in order, so a simulated run's event sequence is fixed
            if engine.healthy:
                try:
                    await engine.release(req.id)
                except EngineCallError:
                    pass  # it died meanwhile: a dead engine holds nothing
    record.finish_time = record.last_token_time if record.status == "ok" and record.output_len else runtime.now()
    tags = strategy.pop_tags(req.id)
    if tags:
        record.tags = tags
    forget_page_keys(req)
