"""The runtime a strategy may await: the same four calls on SimPy and on asyncio.

Strategies never import asyncio or simpy; they use `runtime.gather`, `runtime.sleep`,
`runtime.now` and `runtime.spawn`, so one strategy object serves both backends. The two
implementations live with their backends: sim.runtime.SimRuntime (SimPy) and
real.runtime.AsyncioRuntime (asyncio), so a simulation never imports asyncio.
"""
from __future__ import annotations

from collections.abc import Awaitable, Coroutine
from typing import Any, Protocol


class Runtime(Protocol):
    def now(self) -> float:
        """Seconds on this runtime's clock (simulated or monotonic wall time)."""
        ...

    def sleep(self, seconds: float) -> Awaitable[None]: ...

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        """Run awaitables concurrently; results in order; the first exception propagates."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Start a coroutine in the background (fire and forget); its failure is logged, not raised."""
        ...
