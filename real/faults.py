"""A fault schedule (core_api.faults) applied to real engine processes during a run.

crash: SIGKILL; restart: the engine started again on its old address (RealCluster.restart), taken
back by the router as a new incarnation; stall: SIGSTOP, SIGCONT `duration` later (past the
heartbeat timeout the router declares the engine dead, and fences it off when it wakes); slow:
the process runs 1/factor of each 20 ms (SIGSTOP / SIGCONT), so its steps take `factor` times as
long. Times count from `origin` (time.monotonic() at the run's t = 0).
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

from core_api.faults import Fault, FaultSchedule

SLOW_PERIOD_S = 0.02


async def apply_faults(cluster, schedule: FaultSchedule, origin: float) -> list[dict]:
    """Apply every fault at its time; returns what was done when (for the run's record)."""
    schedule.check_engines(cluster.engine_ids)
    done, tasks = [], []
    for fault in schedule.faults:
        delay = origin + fault.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        done.append({"at": round(time.monotonic() - origin, 4), "kind": fault.kind, "engine": fault.engine})
        tasks.append(asyncio.ensure_future(_apply(cluster, fault)))
    await asyncio.gather(*tasks)
    return done


async def _apply(cluster, fault: Fault) -> None:
    proc = cluster.procs.get(fault.engine)
    if proc is None:
        raise ValueError(f"fault on {fault.engine}: only engines this cluster started can be faulted")
    if fault.kind == "crash":
        proc.kill()
    elif fault.kind == "restart":
        await asyncio.to_thread(cluster.restart, fault.engine)
    elif fault.kind == "stall":
        os.kill(proc.pid, signal.SIGSTOP)
        try:
            await asyncio.sleep(fault.duration)
        finally:
            os.kill(proc.pid, signal.SIGCONT)
    else:
        end = time.monotonic() + fault.duration
        run_s = SLOW_PERIOD_S / fault.factor
        try:
            while time.monotonic() < end:
                await asyncio.sleep(run_s)
                os.kill(proc.pid, signal.SIGSTOP)
                await asyncio.sleep(SLOW_PERIOD_S - run_s)
                os.kill(proc.pid, signal.SIGCONT)
        finally:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGCONT)
