"""Strategies users wrote from the README that deadlocked engines under a burst (test-only).

- BidirectionalPD: every engine is the prefill engine of one request and the decode engine of
  the next, so every engine both sends KV and holds reservations for incoming KV.
- Chain: the middle engine receives the first half of the prompt's KV from the first, then sends
  the whole prompt's KV (but the last token) on to the third, which generates. The middle engine
  releases its reservation once its send is done: the received pages stay in its prefix cache.
"""
from __future__ import annotations

import itertools

from core_api.strategy import Strategy, StrategyError


class BidirectionalPD(Strategy):
    def validate(self) -> None:
        if len(self.engines) < 2:
            raise StrategyError("bidirectional PD needs 2 engines")
        self._turn = itertools.count()

    async def generate(self, req):
        i = next(self._turn)
        prefill, decode = self.engines[i % 2], self.engines[(i + 1) % 2]
        kv_addr, matched = await decode.prep_recv(req, end=-1)
        await prefill.remote_send(req, kv_addr, decode.id, begin=matched, end=-1)
        self.tag(req, prefill=prefill.id, decode=decode.id)
        async for chunk in decode.start_generate(req, begin=-1):
            yield chunk


class Chain(Strategy):
    def validate(self) -> None:
        if len(self.engines) < 3:
            raise StrategyError("the chain needs 3 engines")

    async def generate(self, req):
        first, middle, last = self.engines[:3]
        half = (req.prompt_len - 1) // 2
        if half > 0:
            kv_addr, matched = await middle.prep_recv(req, end=half)
            await first.remote_send(req, kv_addr, middle.id, begin=matched, end=half)
        kv_addr, matched = await last.prep_recv(req, end=-1)
        await middle.remote_send(req, kv_addr, last.id, begin=matched, end=-1)
        await middle.release(req.id)  # the received prefix stays cached there; its reservation is done
        async for chunk in last.start_generate(req, begin=-1):
            yield chunk
