"""A fault schedule (core_api.faults) applied to real engine processes during a run.

crash: SIGKILL; restart: the engine started again on its old address (RealCluster.restart), taken
back by the router as a new incarnation; stall: SIGSTOP, SIGCONT `duration` later (past the
heartbeat timeout the router declares the engine dead, and fences it off when it wakes); slow:
the process runs 1/factor of each 20 ms (SIGSTOP / SIGCONT), so its steps take `factor` times as
long; partition / link_slow: the sending engine holds its KV chunks to the peer until the fault
ends, or spaces them so that each takes `factor` times as long (real.kv_sender). Times count from
`origin` (time.monotonic() at the run's t = 0).
"""
from __future__ import annotations

import asyncio
import os
import signal
import time

from core_api.faults import LINK_FAULTS, Fault, FaultSchedule

SLOW_PERIOD_S = 0.02


async def apply_faults(cluster, schedule: FaultSchedule, origin: float, engines: dict | None = None) -> list[dict]:
    """Apply every fault at its time; returns what was done when (for the run's record).
    Link faults are told to the sending engine, so they need its client (`engines` by id)."""
    schedule.check_engines(cluster.engine_ids)
    done, tasks = [], []
    for fault in schedule.faults:
        delay = origin + fault.at - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        done.append({"at": round(time.monotonic() - origin, 4), "kind": fault.kind, "engine": fault.engine})
        tasks.append(asyncio.ensure_future(_apply(cluster, fault, engines or {})))
    await asyncio.gather(*tasks)
    return done


async def _apply(cluster, fault: Fault, engines: dict) -> None:
    if fault.kind in LINK_FAULTS:
        if fault.engine not in engines:
            raise ValueError(f"link fault from {fault.engine}: its client is needed (pass the session's engines)")
        await engines[fault.engine].link_fault(fault.peer, fault.duration, fault.factor)
        return
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


async def run_with_faults(cluster, engines: dict, workload, strategy: str, params: dict, schedule: FaultSchedule,
                          settle_s: float = 0.0, **run_args):
    """Serve `workload` through `strategy` on a session's `engines` while `schedule` is applied to
    `cluster`'s processes (both from now); then wait up to `settle_s` for engines that woke up to
    be taken back. Returns the run's RealRunResult (`run_args`: run_workload's seed, config_echo)."""
    from real.cluster import run_workload

    _, result = await asyncio.gather(apply_faults(cluster, schedule, time.monotonic(), engines),
                                     run_workload(list(engines.values()), workload, strategy, params, **run_args))
    deadline = time.monotonic() + settle_s
    while time.monotonic() < deadline and not all(e.healthy for e in engines.values()):
        await asyncio.sleep(0.1)
    return result
