"""vLLM's own data-parallel load balancer, for replaying and comparing against vLLM runs with
`data_parallel_size` > 1.

vLLM's API server (its internal load balancer, `DPLBAsyncMPClient` in vllm/v1/engine/core_client.py)
sends each request to the engine with the lowest `4 x waiting + running`, scanning the engines
in rank order so that ties go to the lowest rank. It sees those counts as the engines last
published them (its coordinator forwards them at most every 100 ms), and between publications it
adds one waiting request to each engine it routes to. Here an engine's counts are read again at
the first request `stats_interval_s` after the last reading: at most that old, as in vLLM, but
read at a routing rather than on the coordinator's own clock. Where the engines never publish
their counts (vLLM versions that run a dense model's data-parallel ranks as independent engines),
`stats_interval_s: .inf` gives what the API server then does: its own counts only, round robin.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core_api.strategy import Strategy, register
from core_api.types import Request

WAITING_WEIGHT = 4  # vLLM: a waiting request counts four times a running one


@register("vllm_dp")
class VllmDataParallel(Strategy):
    """The engine with the lowest 4 x waiting + running, as of counts at most `stats_interval_s` old."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")
        stats_interval_s: float = Field(0.1, ge=0, description="how old the counts the router routes by may be")

    def validate(self) -> None:
        self._counts = {e.id: [0, 0] for e in self.engines}  # [waiting, running] as the router sees them
        self._read_at: float | None = None
        self._rank = {e.id: i for i, e in enumerate(self.engines)}

    def _refresh(self) -> None:
        now = self.runtime.now()
        if self._read_at is not None and now - self._read_at < self.params.stats_interval_s:
            return
        self._read_at = now
        for engine in self.engines:
            load = engine.load()
            self._counts[engine.id] = [load.num_waiting, load.num_running]

    def _pick(self, candidates):
        self._refresh()

        def score(engine):
            waiting, running = self._counts[engine.id]
            return WAITING_WEIGHT * waiting + running, self._rank[engine.id]

        chosen = min(candidates, key=score)
        self._counts[chosen.id][0] += 1  # routed, not yet in the counts it was read from
        return chosen

    def generate(self, req: Request):
        return self.stream_with_retry(req, self._pick)
