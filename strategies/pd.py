"""Prefill/decode disaggregation (nPmD).

The least-loaded prefill engine computes KV of prompt[:-1] and writes it into pages the chosen
decode engine reserved with prep_recv; the decode engine then computes the last prompt token
(sampling the first output token) and decodes. Prefill never samples. Wins when long prompts
would otherwise stall decoding (TPOT), at the price of moving KV between engines.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from core_api.strategy import Strategy, StrategyError, register
from core_api.types import Request


class RoleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefill: list[str] | None = None  # engine ids; default: the first half of the engines
    decode: list[str] | None = None  # default: the rest


class DisaggregatedStrategy(Strategy):
    """Shared role handling for strategies with prefill and decode engine sets."""

    Params = RoleParams

    def validate(self) -> None:
        if len(self.engines) < 2:
            raise StrategyError(f"strategy {self.name!r} needs at least 2 engines, got {len(self.engines)}")
        ids = [e.id for e in self.engines]
        half = max(1, len(ids) // 2)
        p = self.params
        self.prefill = self.engines_named(p.prefill if p.prefill is not None else ids[:half], "prefill")
        self.decode = self.engines_named(p.decode if p.decode is not None else ids[half:], "decode")

    def pick_prefill(self):
        return min(self.prefill, key=lambda e: e.load().queued_prefill_tokens)

    def pick_decode(self):
        def key(e):
            load = e.load()
            return (load.num_running + load.num_waiting + load.num_receiving, -load.usable_pages)

        return min(self.decode, key=key)


@register("pd")
class PrefillDecode(DisaggregatedStrategy):
    async def generate(self, req: Request):
        prefill, decode = self.pick_prefill(), self.pick_decode()
        self.tag(req, prefill=prefill.id, decode=decode.id)
        kv_addr, matched = await decode.prep_recv(req, end=-1)
        await prefill.remote_send(req, kv_addr, decode.id, begin=matched, end=-1)
        async for chunk in decode.start_generate(req, begin=-1):
            yield chunk
