"""How fast this machine runs the profiled engine's steps right now, against its profile.

A shared CPU VM's speed moves by 5-10% within half an hour, in either direction: timing six of a
profile's own grid points again 25 minutes after it gave 0.94-0.96x their profiled times, and
validations the same day saw engines stepping at 0.93-1.10x their profile
(calibration/profiles/README.md). A profile is that much stale by the time it is used, whatever
the simulator does. So `validate` probes the machine just before each case's real runs: a small
grid of the kinds of step the profile covers (prefill chunks with and without cached context,
decode batches, a mixed step), timed by the profiler's own code on the profiler's core, against
what the profile predicts for those very steps. The probe runs before the real runs and knows
nothing of them, so the simulation at the probed speed is still a prediction: of what this
machine will do now, rather than of what it did when it was profiled.
"""
from __future__ import annotations

import statistics

from calibration import environment
from calibration.profile import GridSpec, ProfileSettings, profile_steps
from core_api.step import StepFeatures
from sim.cost_model import FittedCostModel
from sim.profile import CostProfile

# A dozen points of every step kind, small enough to time in about a second on the tiny model.
PROBE_GRID = GridSpec(prefill_tokens=[16, 128], prefill_context=[0, 512], prefill_seqs=[1], decode_seqs=[2, 16],
                      decode_context=[128], mixed_decode=[(4, 128)], mixed_prefill=[(32, 0)], transfer_pages=[],
                      stream_seqs=[], stream_steps=[], idle_ms=[], idle_tokens=[])


def probe_speed(profile: CostProfile, engine, seed: int = 0, grid: GridSpec = PROBE_GRID) -> float:
    """The median over the probe's points of (mean measured step time / the profile's prediction):
    1.0 on the machine as it was profiled, above 1 if it runs slower now. `engine` is the real
    engines' EngineSpec (the profiled settings)."""
    settings = ProfileSettings(engine=engine, grid=grid, warmup=1, repeats=5, rounds=2, transfers=False, seed=seed)
    with environment.controlled_cpu(engine.threads, environment.default_core()):
        samples = profile_steps(settings)
    model = FittedCostModel.from_profile(profile)
    return statistics.median(statistics.fmean(s.times_s) / model.step_time(StepFeatures(**s.features))
                             for s in samples)
