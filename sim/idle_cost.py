"""What a real engine's step costs extra when the engine sat idle just before it.

An idle engine blocks in its socket poll until work comes; the first step after that runs slower
than the same step right after another step, by more the longer the wait was. Measured by
`calibrate profile` (calibration.profile's idle samples: a prefill step after the engine's poll
waited t, against the same step after a step): on the project's 2-core CPU VM about 0.1 ms after
3 ms idle, 0.6 ms after 30 ms and 0.9-1.1 ms after 100-300 ms, about the same for a 32- and a
512-token step (2.3 and 27 ms long), so it is a cost in seconds, not a factor. Whatever the cause on a given host (caches and TLBs cooling,
the core's clock, the hypervisor), the step profile alone never sees it: its grid runs steps
back to back. It lands on exactly the steps that decide TTFT at low load, since a request that
finds its engine idle starts with such a step.

SimEngine charges `seconds(idle)` to the first step after an idle spell.
"""
from __future__ import annotations

import math
from bisect import bisect_right

from pydantic import Field, model_validator

from core_api.config_base import Strict


class IdleCost(Strict):
    """Extra seconds of the first step after `idle_s[i]` idle: `extra_s[i]`, linear in between,
    0 at no idle, and flat past the last point (an engine cannot get colder than fully cold)."""

    idle_s: list[float] = Field(min_length=1, description="idle spells measured (seconds, increasing)")
    extra_s: list[float] = Field(min_length=1, description="measured extra seconds of the step after each")

    @model_validator(mode="after")
    def _a_table(self) -> IdleCost:
        if len(self.idle_s) != len(self.extra_s):
            raise ValueError(f"idle_s has {len(self.idle_s)} points, extra_s {len(self.extra_s)}")
        if any(not math.isfinite(x) for x in (*self.idle_s, *self.extra_s)):
            raise ValueError("idle_s and extra_s must be finite")
        if self.idle_s[0] <= 0 or any(b <= a for a, b in zip(self.idle_s, self.idle_s[1:])):
            raise ValueError(f"idle_s must be positive and increasing, got {self.idle_s}")
        if min(self.extra_s) < 0:
            raise ValueError(f"extra_s must be >= 0, got {self.extra_s}")
        return self

    def seconds(self, idle: float) -> float:
        """Extra seconds of a step that follows `idle` seconds of idling."""
        xs, ys = self.idle_s, self.extra_s
        if idle <= 0:
            return 0.0
        i = bisect_right(xs, idle)
        if i == len(xs):
            return ys[-1]
        x0, y0 = (xs[i - 1], ys[i - 1]) if i else (0.0, 0.0)
        return y0 + (ys[i] - y0) * (idle - x0) / (xs[i] - x0)
