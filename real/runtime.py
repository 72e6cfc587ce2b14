"""The real backend's runtime (core_api.runtime.Runtime): plain asyncio on the router's event loop."""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

log = logging.getLogger(__name__)


class AsyncioRuntime:
    """The real backend's runtime: plain asyncio on the router's event loop."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self._background: set[asyncio.Task] = set()
        self.spawn_errors: list[BaseException] = []

    def now(self) -> float:
        return time.monotonic() - self._t0

    def sleep(self, seconds: float) -> Awaitable[None]:
        return asyncio.sleep(seconds)

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        return list(await asyncio.gather(*aws))

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.spawn_errors.append(task.exception())
            log.warning("background task failed: %r", task.exception())

    async def drain(self) -> None:
        """Wait for spawned background work (end of a run)."""
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
