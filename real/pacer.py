"""Start requests at their arrival times, to within a few tens of microseconds.

asyncio cannot: its selector rounds every poll timeout UP to a whole millisecond (epoll_wait
takes milliseconds), so `await asyncio.sleep(delay)` wakes on average ~0.5 ms late and up to
1 ms. A run records TTFT from the nominal arrival time, so that lateness would be counted as
serving latency that no engine caused (about 5% of TTFT of the tiny CPU model, and the
simulator, which starts requests exactly on time, could never match it). A thread sleeping on a
lock with a timeout (nanosecond clock) wakes on time and hands each arrival to the event loop
with call_soon_threadsafe, whose self-pipe wakes the loop at once.
"""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Sequence


async def paced(arrivals: Sequence[float], origin: float, start: Callable[[int], None]) -> None:
    """Call `start(i)` on the running loop at monotonic time `origin + arrivals[i]`, in order;
    return once every start has run. Cancelling stops the thread before its next arrival."""
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    stop = threading.Event()

    def fire(i: int) -> None:
        if done.done():
            return
        try:
            start(i)
        except BaseException as exc:  # noqa: BLE001 - surface it in the awaiting coroutine
            stop.set()
            done.set_exception(exc)
            return
        if i == len(arrivals) - 1:
            done.set_result(None)

    def run() -> None:
        for i, t in enumerate(arrivals):
            delay = origin + t - time.monotonic()
            if delay > 0 and stop.wait(delay):
                return
            if stop.is_set():
                return
            loop.call_soon_threadsafe(fire, i)

    if not arrivals:
        return
    thread = threading.Thread(target=run, name="arrivals", daemon=True)
    thread.start()
    try:
        await done
    finally:
        stop.set()
