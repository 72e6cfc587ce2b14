"""When the steps of a decode run end: a run of identical decode steps priced in one go.

The engine applies a run of pure-decode steps as one timeout (sim.engine, core_api.fast_forward);
this says when each of its steps ends and how long each took, the same floats stepping would give:
a cost model that offers `decode_step_times` prices all steps in one call (element-wise the
operations of its step_time), and a cumulative sum adds the durations in step order, as stepping
does. Otherwise, or while a slow-down fault scales step times, each step is priced in turn.
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np

from core_api.step import StepFeatures

# Below this many steps, numpy's per-call cost exceeds pricing each step (about 10 on this
# project's CPU VM: 14 us per priced run against 1.3 us per step); either way the floats are the same.
PRICED_RUN_MIN_STEPS = 16


def decode_run_times(cost_model, f: StepFeatures, run: int, start: float, deadline: float | None,
                     speed_factor: Callable[[float], float] | None = None) -> tuple[list[float], list[float]]:
    """End times and durations of up to `run` decode steps of the batch `f` from `start`: those
    before `deadline` (the first held reservation's) and the step that crosses it, since the
    engine must look at an expiry before its next step. `speed_factor(t)`: a slow-down in force."""
    features = StepFeatures(decode_seqs=f.decode_seqs, decode_context=f.decode_context,
                            decode_max_context=f.decode_max_context, sampled=f.sampled)
    priced = getattr(cost_model, "decode_step_times", None)
    if priced is not None and speed_factor is None and run >= PRICED_RUN_MIN_STEPS:
        durations = priced(features, run)
        ends = np.cumsum(np.concatenate(([start], durations)))[1:]
        if deadline is not None:
            ends = ends[: int(np.searchsorted(ends, deadline)) + 1]
        return ends.tolist(), durations.tolist()
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
