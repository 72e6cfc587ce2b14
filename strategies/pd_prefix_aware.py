"""Prefix-cache-aware PD: send only what the decode engine lacks, and skip prefill when it has it.

Picks the decode engine holding the longest cached prefix of the prompt (among decode engines
whose load is within `load_slack` sequences of the least busy), reserves prompt[matched:-1] there,
and has the prefill engine with the least work left (queued tokens plus the uncached part of this
prompt on it) send only KV of [matched, -1). When at most `max_local_tokens` prompt tokens are
missing on the decode engine (a multi-turn follow-up, a shared system prompt with a short
question), the prefill engine is skipped: the decode engine computes them itself with
start_generate(begin=matched) on its reservation, which saves a transfer round trip and a
prefill-queue wait. Wins over plain PD when prompts share long prefixes; equals it otherwise.
"""
from __future__ import annotations

from pydantic import Field

from core_api.strategy import register
from core_api.types import Request
from strategies.pd import DisaggregatedStrategy, RoleParams, busy


class PrefixPDParams(RoleParams):
    max_local_tokens: int = Field(64, ge=0)  # at most this many uncached tokens: skip the prefill engine
    load_slack: int = Field(8, ge=0)  # decode engines this close to the least busy compete on cache


@register("pd_prefix_aware")
class PrefixAwarePD(DisaggregatedStrategy):
    Params = PrefixPDParams

    async def generate(self, req: Request):
        p, end = self.params, req.prompt_len - 1
        decode = await self._pick_decode(req)
        kv_addr, matched = await decode.prep_recv(req, end=end)
        if req.prompt_len - matched <= p.max_local_tokens or matched >= end:
            self.tag(req, mode="local", prefill=None, decode=decode.id, split=matched, matched=matched)
            begin = matched
        else:
            prefill = await self._pick_prefill(req, end)
            self.tag(req, mode="pd", prefill=prefill.id, decode=decode.id, split=end, matched=matched)
            await prefill.remote_send(req, kv_addr, decode.id, begin=matched, end=end)
            begin = end
        async for chunk in decode.start_generate(req, begin=begin):
            yield chunk

    async def _pick_decode(self, req: Request):
        cached = await self.runtime.gather(*(e.cached_prefix_len(req) for e in self.decode))
        floor = min(busy(e) for e in self.decode) + self.params.load_slack
        near = [(c, e) for c, e in zip(cached, self.decode) if busy(e) <= floor]
        return max(near, key=lambda ce: (ce[0], -busy(ce[1])))[1]

    async def _pick_prefill(self, req: Request, end: int):
        cached = await self.runtime.gather(*(e.cached_prefix_len(req) for e in self.prefill))
        work = [e.load().queued_prefill_tokens + end - min(c, end) for c, e in zip(cached, self.prefill)]
        return self.prefill[work.index(min(work))]
