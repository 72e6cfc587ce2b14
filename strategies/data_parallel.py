"""Data parallel: each request runs whole on one engine.

Wins when prompts are short relative to outputs, or when engines are few: no KV moves, every
engine does both prefill and decode, and nothing waits on another engine. Dead engines leave the
rotation; a request whose engine goes down before its first token is retried on another
(`Strategy.stream_with_retry`), tagged `retried_from`.
"""
from __future__ import annotations

from core_api.strategy import Strategy, register
from core_api.types import Request


@register("round_robin")
class RoundRobin(Strategy):
    """Engines in turn. Oblivious to load, so best when requests are alike."""

    def validate(self) -> None:
        self._next = 0

    def _in_turn(self, candidates):
        """The next engine in the fixed order that is among `candidates` (live, not tried)."""
        ids = {e.id for e in candidates}
        n = len(self.engines)
        for k in range(n):
            engine = self.engines[(self._next + k) % n]
            if engine.id in ids:
                self._next += k + 1
                return engine
        raise AssertionError("no candidate engine")

    def generate(self, req: Request):
        return self.stream_with_retry(req, self._in_turn)


@register("least_loaded")
class LeastLoaded(Strategy):
    """The engine with the fewest queued prefill tokens, ties broken by fewest sequences."""

    def generate(self, req: Request):
        return self.stream_with_retry(req, least_loaded)


def least_loaded(engines):
    """Fewest queued prefill tokens (the next request's TTFT), then fewest sequences (its TPOT)."""

    def key(engine):
        load = engine.load()
        return (load.queued_prefill_tokens, load.num_running + load.num_waiting)

    return min(engines, key=key)
