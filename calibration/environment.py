"""Where a profile was measured, and the knobs that make CPU timings repeatable.

CPU step times of a small model are dominated by interpreter and kernel-launch overhead, so
they move with anything else running on the machine. What helps, in order:

- one intra-op thread (`torch.set_num_threads(1)`): no thread-pool wake-ups, and the engine
  processes of a validation run (also one thread each) do the same work per step;
- pinning the process to one core (`os.sched_setaffinity`), so the scheduler does not migrate
  it between caches mid-step;
- warm-up steps per grid point (allocator, kernel selection, branch predictors), then repeats
  and the median, which ignores the few steps a neighbour's burst lands on.

The load average before and after is recorded with the samples: a profile measured on a
busy machine says so.
"""
from __future__ import annotations

import os
import platform
import sys
import time
from contextlib import contextmanager
from typing import Any

import torch


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device | str) -> str:
    """'NVIDIA H100 80GB HBM3' on CUDA, 'cpu: AMD EPYC' on CPU (what CostProfile.hardware holds)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu: {cpu_name()}"


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


class ForeignLoad:
    """Share of the machine's CPU used by OTHER processes while the body runs (0 = quiet,
    1 = every core busy with someone else): total busy time from /proc/stat less this process's
    own CPU time. A profile taken while other work ran says so in its environment."""

    def __init__(self, pids: list[int] = ()) -> None:
        self.pids = list(pids)  # other processes that count as ours (engine processes)

    def __enter__(self):
        self.share: float | None = None
        self._busy0, self._own0, self._t0 = _busy_seconds(), self._own(), time.perf_counter()
        return self

    def _own(self) -> float:
        return _own_seconds() + sum(process_seconds(pid) for pid in self.pids)

    def __exit__(self, *exc) -> None:
        busy1, own1, t1 = _busy_seconds(), self._own(), time.perf_counter()
        if self._busy0 is None or busy1 is None or t1 <= self._t0:
            return
        foreign = (busy1 - self._busy0) - (own1 - self._own0)
        self.share = round(max(0.0, foreign) / ((t1 - self._t0) * (os.cpu_count() or 1)), 3)


def _busy_seconds() -> float | None:
    try:
        with open("/proc/stat") as fh:
            fields = [int(x) for x in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float:
    """CPU time of another process (all its threads) from /proc/PID/stat; 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    except (OSError, ValueError, IndexError):
        return 0.0


def run_delay_seconds(pid: int) -> float:
    """How long the process's main thread was ready to run but waited for a core (the kernel's
    schedstat run delay): time another thread or process took from it. 0 if unreadable."""
    try:
        with open(f"/proc/{pid}/schedstat") as fh:
            return int(fh.read().split()[1]) / 1e9
    except (OSError, ValueError, IndexError):
        return 0.0


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def synchronize(device: torch.device | str) -> None:
    """Wait for queued kernels: a step's wall time must include its GPU work."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def controlled_cpu(threads: int = 1, core: int | None = None):
    """Run the body with `threads` torch threads, pinned to `core` when given and possible;
    restore both afterwards. Yields what was actually set (pinning can be refused)."""
    old_threads = torch.get_num_threads()
    old_affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    pinned = None
    torch.set_num_threads(threads)
    if core is not None and old_affinity is not None:
        try:
            os.sched_setaffinity(0, {core})
            pinned = core
        except OSError:
            pinned = None
    try:
        yield {"threads": threads, "pinned_core": pinned}
    finally:
        torch.set_num_threads(old_threads)
        if pinned is not None:
            os.sched_setaffinity(0, old_affinity)


def default_core() -> int | None:
    """The last core this process may run on (core 0 takes most interrupts and daemons)."""
    if not hasattr(os, "sched_getaffinity"):
        return None
    cores = sorted(os.sched_getaffinity(0))
    return cores[-1] if cores else None


def boot_id() -> str | None:
    """This boot of this machine. Virtual machines cloned from one image share /etc/machine-id,
    so the boot id is what tells a profile measured here from one measured on another machine
    (or before a reboot); validation says when they differ."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            return fh.read().strip() or None
    except OSError:
        return None


def describe(device: torch.device | str, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything about the machine and software a reader needs to judge or repeat a profile."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "boot_id": boot_id(),
        "host": platform.node(),
        "device": str(device),
        "device_name": device_name(device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "load_average": load_average(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["gpu_memory_bytes"] = torch.cuda.get_device_properties(device).total_memory
    env.update(extra or {})
    return env


def pin_engines(procs: dict) -> dict[str, int]:
    """Engine process i (every thread: zmq's I/O thread too) on core i (mod cores); this process
    (the router) on the cores left over, if any, so it never preempts an engine mid-step. The
    caller restores its own affinity afterwards."""
    if not hasattr(os, "sched_setaffinity"):
        return {}
    cores = sorted(os.sched_getaffinity(0))
    pinned = {}
    for i, (eid, proc) in enumerate(procs.items()):
        core = cores[i % len(cores)]
        try:
            for tid in _threads(proc.pid):
                os.sched_setaffinity(tid, {core})
            pinned[eid] = core
        except OSError:
            pass
    spare = set(cores) - set(pinned.values())
    if spare:
        os.sched_setaffinity(0, spare)
        pinned["router"] = min(spare)
    return pinned


def _threads(pid: int) -> list[int]:
    try:
        return [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return [pid]
