"""Runs of identical decode steps on a simulated engine: when their steps end, and how the engine
applies a run as one timeout while the rest of the cluster sees what stepping would show.

The engine applies a run of pure-decode steps as one timeout (sim.engine, core_api.fast_forward);
this says when each of its steps ends and how long each took, the same floats stepping would give:
a cost model that offers `decode_step_times` prices all steps in one call (element-wise the
operations of its step_time), and a cumulative sum adds the durations in step order, as stepping
does. Otherwise, or while a slow-down fault scales step times, each step is priced in turn.
"""
from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from itertools import accumulate

from core_api.sequence import RUNNING
from core_api.step import StepFeatures

# Below this many steps, numpy's per-call cost exceeds pricing each step (about 6 on this
# project's CPU VM: 6-7 us per priced run against 1.1 us per step); either way the floats are the same.
PRICED_RUN_MIN_STEPS = 6


def decode_run_times(cost_model, f: StepFeatures, run: int, start: float, deadline: float | None,
                     speed_factor: Callable[[float], float] | None = None) -> tuple[list[float], list[float]]:
    """End times and durations of up to `run` decode steps of the batch `f` from `start`: those
    before `deadline` (the first held reservation's) and the step that crosses it, since the
    engine must look at an expiry before its next step. `speed_factor(t)`: a slow-down in force."""
    priced = getattr(cost_model, "decode_step_times", None)
    if priced is not None and speed_factor is None and run >= PRICED_RUN_MIN_STEPS:
        durations = priced(f, run).tolist()  # f: a pure-decode batch (fast_forward.decode_run_length)
        times = list(accumulate(durations, initial=start))  # one add per step, in order, as stepping
        del times[0]
        if deadline is not None:
            del times[bisect_left(times, deadline) + 1 :]
        return times, durations
    features = StepFeatures(decode_seqs=f.decode_seqs, decode_context=f.decode_context,
                            decode_max_context=f.decode_max_context, sampled=f.sampled)
    step_time, times, durations, t = cost_model.step_time, [], [], start
    for _ in range(run):
        if deadline is not None and times and t >= deadline:
            break
        d = step_time(features) * (speed_factor(t) if speed_factor is not None else 1.0)
        t += d
        times.append(t)
        durations.append(d)
        features.decode_context += f.decode_seqs
        features.decode_max_context += 1
    return times, durations


class DecodeRuns:
    """Mixed into SimEngine (which sets the `_run_*` attributes and cuts runs in `_poke`)."""

    def _decode_run(self, batch, run: int, life: int):
        """Up to `run` pure-decode steps as one timeout. A wake-up (new work) cuts the run short
        at the end of the step in progress, so nothing is scheduled later than it would be."""
        env = self.env
        start = env.now
        times, durations = decode_run_times(self.cost_model, batch.features, run, start, self._next_expiry(),
                                            None if not self._slow else self._speed_factor)
        t = times[-1]
        self._run_times, self._run_cut, self._run_batch, self._run_claimed = times, None, batch, 0
        self._run_end = end = env.event()
        env.timeout(t - start).callbacks.append(lambda _ev: end.triggered or end.succeed())
        yield end
        if self._run_cut is not None:
            times = times[: self._run_cut]
        stretch = self._stall_extension(times[-2] if len(times) > 1 else start, times[-1])
        if stretch:  # a stall during the last step applied (the run was cut there) stretches it
            yield env.timeout(stretch)
            times[-1] += stretch
        self._run_end = self._run_batch = None
        if life != self.incarnation:  # the engine died in the run's last step (a crash cuts the run there)
            self._count_steps(durations[: len(times) - 1])  # the steps before it ran, as stepping counts them
            return
        self._count_steps(durations[: len(times)])
        self._after_step(self.sched.apply_decode_run(batch, times), len(times))

    def _count_steps(self, durations: list[float]) -> None:
        self.steps += len(durations)
        busy = self.busy_s
        for d in durations:  # step by step, as stepping adds them
            busy += d
        self.busy_s = busy

    def _taking_pages(self, call):
        """Run a call that may take pages outside the step loop (a reservation admitted at once, a
        send served from the cache) as it would run between two real steps. During a decode run
        the run's sequences first get the pages stepping would have given them by now (each
        step's pages are taken when it is scheduled); if the call then leaves too few for the rest
        of the run, the run ends after the step in progress and stepping resumes, preempting
        as a real engine would."""
        batch = self._run_batch
        if batch is None:
            return call()
        self._claim_run_pages()
        result = call()
        kv, steps = self.sched.kv, len(self._run_times)
        rest = sum(max(0, kv.pages_for(s.num_computed + steps) - len(s.pages)) for s in batch.seqs)
        if rest > kv.num_available:
            self._poke()
        return result

    def _claim_run_pages(self) -> None:
        """During a decode run, give its sequences the pages stepping would have given them by
        now (each step takes its pages when it is scheduled), so that whatever looks at, takes or
        gives back pages meanwhile sees what it would see between real steps: called before each
        of those, the run's pages are taken in the order stepping takes them."""
        batch = self._run_batch
        if batch is None:
            return
        state, times = self.sched.state, self._run_times
        # The step in progress included; at a step boundary, the step ending then but not the next
        # one (what stepping does for the events of that instant: tests/test_sim_fast_paths.py).
        started = min(bisect_left(times, self.env.now) + 1, len(times))
        if started == self._run_claimed:  # pages only change hands here and in the run itself
            return
        self._run_claimed = started
        for seq in batch.seqs:
            if seq.status != RUNNING:  # released during the run: its pages are gone for good
                continue
            need = state.kv.pages_for(seq.num_computed + started) - len(seq.pages)
            if need > 0:
                state.grow(seq, need)
