"""Drive async strategies on SimPy.

An engine call hands out `SimWait(event)`; awaiting it yields the SimPy event out of the
coroutine. `_drive` is a SimPy process generator that relays each yielded event to SimPy and
sends the event's value back in (or throws its exception), so `async def` strategies, async
generators and `await` chains run unchanged on simulated time. A coroutine that finishes without
awaiting anything costs no event at all.
"""
from __future__ import annotations

from collections.abc import Awaitable, Coroutine, Generator
from typing import Any

import simpy


class SimWait:
    """Awaitable wrapper of one SimPy event."""

    __slots__ = ("event",)

    def __init__(self, event: simpy.Event) -> None:
        self.event = event

    def __await__(self) -> Generator[simpy.Event, Any, Any]:
        return (yield self.event)


def _drive(coro: Coroutine) -> Generator[simpy.Event, Any, Any]:
    send, throw = coro.send, coro.throw
    value, error = None, None
    while True:
        try:
            event = send(value) if error is None else throw(error)
        except StopIteration as stop:
            return stop.value
        if not isinstance(event, simpy.Event):
            coro.close()
            raise TypeError(
                f"a strategy awaited {event!r}, which is not a simulator event: use runtime.gather/"
                "runtime.sleep instead of asyncio"
            )
        try:
            value, error = (yield event), None
        except GeneratorExit:  # the process itself is being discarded (e.g. a stalled run ends)
            coro.close()
            raise
        except Exception as exc:  # noqa: BLE001 - the event failed: hand any exception to the coroutine
            value, error = None, exc


class SimRuntime:
    """Runtime over a SimPy Environment; `now()` is simulated seconds."""

    def __init__(self, env: simpy.Environment) -> None:
        self.env = env
        self.spawn_errors: list[BaseException] = []

    def now(self) -> float:
        return self.env.now

    def sleep(self, seconds: float) -> SimWait:
        return SimWait(self.env.timeout(seconds))

    def process(self, coro: Coroutine) -> simpy.Process:
        """Run a coroutine as a SimPy process (an event that fires with its return value)."""
        return self.env.process(_drive(coro))

    async def gather(self, *aws: Awaitable[Any]) -> list[Any]:
        procs = [self.process(_as_coroutine(a)) for a in aws]
        if not procs:
            return []
        await SimWait(self.env.all_of(procs))
        return [p.value for p in procs]

    def spawn(self, coro: Coroutine) -> simpy.Process:
        return self.process(self._guarded(coro))

    async def _guarded(self, coro: Coroutine) -> Any:
        try:
            return await coro
        except Exception as exc:  # noqa: BLE001 - background work must not crash the simulation
            self.spawn_errors.append(exc)
            return None


async def _as_coroutine(aw: Awaitable[Any]) -> Any:
    return await aw
