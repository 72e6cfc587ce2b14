"""Cache-aware data parallel: run each request where the longest prefix of it is cached.

Every engine does prefill and decode (as data parallel), but the request goes to the engine whose
prefix cache holds the longest prefix of its prompt, so shared system prompts, few-shot examples
and earlier turns of a conversation are not recomputed. Pure affinity would pile a hot prefix onto
one engine, so when that engine is busier than the least-loaded one by more than `max_imbalance`
sequences or `max_queue_gap` queued prefill tokens, the request goes to the least-loaded engine
instead (which then caches the prefix too: a hot prefix spreads over engines as load demands).
Wins when many distinct long prefixes (documents, long conversations) do not all fit in every
engine's cache; with few short shared prefixes every engine caches them anyway and it performs
like least-loaded data parallel, which it also is when nothing is shared.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from core_api.strategy import Strategy, register
from core_api.types import Request
from strategies.data_parallel import least_loaded
from strategies.pd import busy


class PrefixParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    max_imbalance: int = Field(8, ge=0)  # sequences the cache holder may run above the least busy engine
    max_queue_gap: int = Field(2048, ge=0)  # ...and queued prefill tokens it may have above it
    min_prefix_tokens: int = Field(64, ge=1)  # shorter cached prefixes do not count as a hit


@register("prefix_aware")
class PrefixAware(Strategy):
    Params = PrefixParams

    async def generate(self, req: Request):
        engine = await self.route(req)
        async for chunk in engine.start_generate(req):
            yield chunk

    async def route(self, req: Request):
        """The engine to run req on; tags mode (hit, miss, spill), engine and cached prefix length."""
        cached = await self.runtime.gather(*(e.cached_prefix_len(req) for e in self.engines))
        least, best = least_loaded(self.engines), max(cached)
        if best < self.params.min_prefix_tokens:
            self.tag(req, mode="miss", engine=least.id, matched=cached[self.engines.index(least)])
            return least
        home = least_loaded([e for e, c in zip(self.engines, cached) if c == best])
        if self.overloaded(home, least):
            engine = self.on_overload(req, home, least, best)
            self.tag(req, mode="spill", engine=engine.id, home=home.id,
                     matched=cached[self.engines.index(engine)])
            return engine
        self.tag(req, mode="hit", engine=home.id, matched=best)
        return home

    def overloaded(self, home, least) -> bool:
        gap = home.load().queued_prefill_tokens - least.load().queued_prefill_tokens
        return busy(home) - busy(least) > self.params.max_imbalance or gap > self.params.max_queue_gap

    def on_overload(self, req: Request, home, least, prefix_len: int):
        """The cache holder is too busy: recompute the prefix on the least busy engine."""
        return least
