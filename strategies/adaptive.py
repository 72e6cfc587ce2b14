"""Adaptive: switch among data parallel, PD and balanced PD at run time, without a restart.

Policy, re-planned every `interval` requests or every `period_s` seconds of runtime clock
(checked as requests arrive, so an idle cluster plans nothing):
1. Token mix of the last `window` requests: prompt tokens P, output tokens O (max_tokens).
   If P < dp_below * O, decode dominates: disaggregating would idle the prefill engines and
   gain little TPOT, so run data parallel (least loaded, all engines). The default 8 is roughly
   how many prefill tokens cost as much engine time as one decode token of a batched decode
   step (compute-bound prefill vs. memory-bound decode of a 7-8B model at batch ~32).
2. Otherwise prefill dominates: disaggregate. The balance ratio follows the prefill backlog,
   the mean queued prefill tokens of the prefill engines: above `queue_high` the prefill side is
   the bottleneck and the ratio rises by `ratio_step` (up to `max_ratio`), so decode engines
   compute more of each prompt; below queue_high / 4 it falls back by a step. Ratio 0 is PD,
   anything above is balanced PD.
Switching only changes how the next requests are split; requests in flight finish as they
started. Every request is tagged with the mode and ratio it ran under; `switches` lists each
change as (time, mode, ratio). Wins on traffic whose mix drifts (chat by day, batch
summarisation by night), where any fixed choice is wrong part of the time.
"""
from __future__ import annotations

from collections import deque

from pydantic import Field

from core_api.strategy import register
from core_api.types import Request
from strategies.balanced_pd import split_at
from strategies.data_parallel import least_loaded
from strategies.pd import DisaggregatedStrategy, RoleParams


class AdaptiveParams(RoleParams):
    interval: int = Field(16, ge=1)  # re-plan every this many requests...
    period_s: float = Field(5.0, gt=0)  # ...or once this much runtime clock has passed
    window: int = Field(64, ge=1)  # recent requests the plan looks at
    dp_below: float = Field(8.0, gt=0)  # prompt:output token ratio under which data parallel runs
    queue_high: int = Field(8192, ge=1)  # prefill backlog (tokens per prefill engine) that raises the ratio
    ratio_step: float = Field(0.1, gt=0, lt=1)
    max_ratio: float = Field(0.5, ge=0, lt=1)


@register("adaptive")
class Adaptive(DisaggregatedStrategy):
    Params = AdaptiveParams

    def validate(self) -> None:
        super().validate()
        self.mode, self.ratio = "dp", 0.0
        self.recent: deque[tuple[int, int]] = deque(maxlen=self.params.window)
        self.switches: list[tuple[float, str, float]] = []
        self._seen, self._planned_at = 0, float("-inf")

    def generate(self, req: Request):
        p, now = self.params, self.runtime.now()
        self.recent.append((req.prompt_len, req.sampling.max_tokens))
        if self._seen % p.interval == 0 or now - self._planned_at >= p.period_s:
            self.plan()
            self._planned_at = now
        self._seen += 1
        self.tag(req, mode=self.mode, ratio=self.ratio)
        if self.mode == "dp":
            return self._data_parallel(req)
        return self.split_flow(req, split_at(req.prompt_len, self.ratio))

    def plan(self) -> None:
        p = self.params
        prompt, out = (sum(x) for x in zip(*self.recent))
        mode, ratio = "dp", 0.0
        if prompt >= p.dp_below * out:
            backlog = sum(e.load().queued_prefill_tokens for e in self.prefill) / len(self.prefill)
            ratio = self.ratio
            if backlog > p.queue_high:
                ratio = min(p.max_ratio, round(ratio + p.ratio_step, 6))
            elif backlog < p.queue_high / 4:
                ratio = max(0.0, round(ratio - p.ratio_step, 6))
            mode = "balanced_pd" if ratio > 0 else "pd"
        if (mode, ratio) != (self.mode, self.ratio):
            self.switches.append((self.runtime.now(), mode, ratio))
        self.mode, self.ratio = mode, ratio

    async def _data_parallel(self, req: Request):
        engine = least_loaded(self.engines)
        self.tag(req, engine=engine.id)
        async for chunk in engine.start_generate(req):
            yield chunk
