"""What an engine process reports about itself (the `stats` call): its steps, as calibration
compares them with a profile, its pages with a leak check, and its KV traffic."""
from __future__ import annotations

import math
import time

from core_api.engine_stats import common_engine_stats
from core_api.step import STEP_FEATURES, StepFeatures


def feature_totals() -> dict[str, float]:
    return dict.fromkeys(STEP_FEATURES, 0.0)


def add_features(totals: dict[str, float], steps_by_tokens: dict[int, int], f: StepFeatures) -> None:
    """Sum one step's features (a fitted step model is linear in them, so sums predict totals)
    and count the step under its tokens (what a profile's token curve prices: a step computes at
    most max_num_batched_tokens tokens, so the count has that many entries at most)."""
    for name in STEP_FEATURES:
        totals[name] += getattr(f, name)
    tokens = f.total_tokens
    steps_by_tokens[tokens] = steps_by_tokens.get(tokens, 0) + 1


class IdleSpells:
    """How long the engine sat idle before the steps that ended an idle spell (calibration prices
    them with a profile's idle cost, sim.idle_cost): counts and summed seconds per log-spaced bin
    (four per decade), so a server that runs for months keeps a few dozen numbers, not every spell.
    Pricing a bin's spells at their mean errs only where the cost curves inside one bin."""

    BINS_PER_DECADE = 4

    def __init__(self) -> None:
        self.bins: dict[int, list[float]] = {}  # bin -> [count, seconds]
        self._since: float | None = None  # when the loop last found nothing to run

    def idle(self, now: float) -> None:
        """The loop found nothing to run (the spell starts at the first such iteration)."""
        if self._since is None:
            self._since = now

    def ran(self, start: float) -> None:
        """A step started at `start`: it ends the idle spell in progress, if any."""
        if self._since is not None:
            self.add(start - self._since)
            self._since = None

    def add(self, seconds: float) -> None:
        b = math.floor(math.log10(max(seconds, 1e-9)) * self.BINS_PER_DECADE)
        entry = self.bins.setdefault(b, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def as_list(self) -> list[list[float]]:
        """[bin, count, summed seconds] per bin, shortest spells first (the bin, so that two
        reports of one process can be subtracted: stats_between)."""
        return [[b, *self.bins[b]] for b in sorted(self.bins)]


MALFORMED = "malformed"  # the op a message that could not be decoded is counted under


class CallCosts:
    """Per op, how many messages the loop handled and the thread CPU that took, outside any step
    (calibration reads a start_generate's cost from it). Ops are the protocol's, so the table is
    as small as the protocol whatever a peer sends."""

    def __init__(self) -> None:
        self.by_op: dict[str, list] = {}  # op -> [messages, seconds]

    def add(self, op: str, seconds: float) -> None:
        entry = self.by_op.setdefault(op, [0, 0.0])
        entry[0] += 1
        entry[1] += seconds

    def as_dict(self) -> dict[str, list]:
        return {op: list(v) for op, v in sorted(self.by_op.items())}


def engine_stats(worker) -> dict:
    """core_api's common figures (the simulator's schema) plus this process's own."""
    sched, kv = worker.sched, worker.sched.kv
    idle = not (sched.holds_sequences or worker.sender.sends)
    try:
        kv.check_no_leaks() if idle else kv.check_consistent()
        leak = None
    except AssertionError as exc:
        leak = str(exc)
    return {**common_engine_stats(sched, worker.steps, worker.busy_s),
            "engine_id": worker.id, "loop_s": worker.loop_s, "step_features": dict(worker.feature_totals),
            "steps_by_tokens": {str(k): n for k, n in sorted(worker.steps_by_tokens.items())},
            "cpu_s": time.process_time(), "loop_cpu_s": time.thread_time(),
            "forward_tokens": worker.runner.forward_tokens, "idle": idle, "leak": leak, "running": len(sched.running),
            "waiting": len(sched.waiting) + len(sched.receive_queue),
            "receiving": len(sched.receiving), "sending": len(worker.sender.sends),
            "kv_bytes_sent": worker.sender.bytes_sent, "kv_bytes_received": worker.transports.bytes_received,
            "kv_land_s": worker.transports.land_s, "kv_chunks_sent": worker.sender.chunks_sent,
            "idle_spells": worker.idle_spells.as_list(), "calls": worker.calls.as_dict(),
            "stream": {"steps": worker.stream_out.steps, "tokens": worker.stream_out.tokens,
                       "messages": worker.stream_out.messages}}


# The stats that count up over a process's life: what it did between two reports is their difference.
_COUNTERS = ("steps", "busy_s", "loop_s")


def stats_between(before: dict, after: dict) -> dict:
    """What one engine process did between two of its reports (`after` taken later): its steps,
    loop time, step features, streamed tokens and idle spells over that span, the rest as `after`
    says. A calibration run preceded by a warm-up on the same processes compares only its own
    steps with the profile; the warm-up's first steps pay for lazy initialisation."""
    if "loop_s" not in before or "loop_s" not in after:
        return after  # a dead engine's report: nothing to subtract
    out = dict(after)
    for name in _COUNTERS:
        out[name] = after[name] - before[name]
    out["step_features"] = {k: v - before["step_features"].get(k, 0.0) for k, v in after["step_features"].items()}
    earlier = before.get("steps_by_tokens", {})
    out["steps_by_tokens"] = {k: n - earlier.get(k, 0) for k, n in after.get("steps_by_tokens", {}).items()
                              if n > earlier.get(k, 0)}
    out["stream"] = {k: v - before["stream"].get(k, 0) for k, v in after["stream"].items()}
    earlier = {b: (n, total) for b, n, total in before["idle_spells"]}
    spells = []
    for b, n, total in after["idle_spells"]:
        n0, total0 = earlier.get(b, (0, 0.0))
        if n > n0:
            spells.append([b, n - n0, total - total0])
    out["idle_spells"] = spells
    earlier = before.get("calls", {})
    out["calls"] = {}
    for op, (n, cpu) in after.get("calls", {}).items():
        n0, cpu0 = earlier.get(op, (0, 0.0))
        out["calls"][op] = [n - n0, cpu - cpu0]
    return out
