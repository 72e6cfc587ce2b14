"""Data parallel: each request runs whole on one engine.

Wins when prompts are short relative to outputs, or when engines are few: no KV moves, every
engine does both prefill and decode, and nothing waits on another engine.
"""
from __future__ import annotations

from core_api.strategy import Strategy, register
from core_api.types import Request


@register("round_robin")
class RoundRobin(Strategy):
    """Engines in turn. Oblivious to load, so best when requests are alike."""

    def validate(self) -> None:
        self._next = 0

    async def generate(self, req: Request):
        engine = self.engines[self._next % len(self.engines)]
        self._next += 1
        self.tag(req, engine=engine.id)
        async for chunk in engine.start_generate(req):
            yield chunk


@register("least_loaded")
class LeastLoaded(Strategy):
    """The engine with the fewest queued prefill tokens, ties broken by fewest sequences."""

    async def generate(self, req: Request):
        engine = least_loaded(self.engines)
        self.tag(req, engine=engine.id)
        async for chunk in engine.start_generate(req):
            yield chunk


def least_loaded(engines):
    """Fewest queued prefill tokens (the next request's TTFT), then fewest sequences (its TPOT)."""

    def key(engine):
        load = engine.load()
        return (load.queued_prefill_tokens, load.num_running + load.num_waiting)

    return min(engines, key=key)
