"""Prefill/decode disaggregation (nPmD).

The least-loaded prefill engine computes KV of prompt[:-1] and writes it into pages the chosen
decode engine reserved with prep_recv; the decode engine then computes the last prompt token
(sampling the first output token) and decodes. Prefill never samples. Wins when long prompts
would otherwise stall decoding (TPOT), at the price of moving KV between engines and of leaving
prefill engines idle when prompts are short.

`DisaggregatedStrategy` holds what every PD flavour shares: the prefill/decode roles (checked
before any request runs), the engine picks, and `split_flow`, the three-call sequence with the
split point as its one parameter (pd: the last prompt token; balanced_pd: a share of the prompt).

Failover (on by default, `failover: false` turns it off): only live engines are picked; when no
prefill engine is live, or the KV transfer fails (the prefill engine died, the transfer broke),
the decode engine releases its reservation and prefills the whole prompt itself, as vLLM's
recompute policy does; when the decode engine is down before the first token, another live decode
engine (else any live engine) takes the request. Tags say so: `failover`, `failover_reason`.
"""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from core_api.errors import EngineDown, TransferFailed
from core_api.strategy import Strategy, StrategyError, register
from core_api.types import Request


class RoleParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prefill: list[str] | None = None  # engine ids; default: the first half of the engines
    decode: list[str] | None = None  # default: the rest
    failover: bool = True  # recompute locally / move to another engine when an engine or transfer fails


def busy(engine) -> int:
    """Sequences an engine is working on or waiting for (EngineLoad.busy)."""
    return engine.load().busy


def _decode_rank(load) -> tuple[int, int]:
    """Least busy first, then the most usable pages."""
    return load.busy, -load.usable_pages


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
        return min(self.live(self.prefill), key=lambda e: e.load().queued_prefill_tokens)

    def pick_decode(self, exclude: tuple[str, ...] = ()):
        """The least busy live decode engine not in `exclude`; with failover and none left, the
        least busy live engine of any role."""
        pool = [e for e in self.decode if e.healthy and e.id not in exclude]
        if not pool and self.params.failover:
            pool = [e for e in self.engines if e.healthy and e.id not in exclude]
        return min(self.live(pool or self.decode), key=lambda e: _decode_rank(e.load()))  # one snapshot each

    async def split_flow(self, req: Request, split: int, prefill=None, decode=None):
        """prefill computes KV of prompt[:split] into decode's pages; decode prefills prompt[split:]
        and generates. Pages decode already caches are not sent (begin = matched); when it caches
        all of prompt[:split], or split is 0, the prefill engine is not called at all."""
        decode = decode or self.pick_decode()
        failed: tuple[str, ...] = ()
        while True:
            streamed = False
            try:
                async for chunk in self._split_flow_on(req, split, prefill, decode):
                    streamed = True
                    yield chunk
                return
            except EngineDown:  # the decode engine died; before its first token, try another
                if streamed or not self.params.failover:
                    raise
                failed += (decode.id,)
                decode = self.pick_decode(exclude=failed)
                self.tag(req, failover="other_decode", failover_reason="EngineDown")

    async def _split_flow_on(self, req: Request, split: int, prefill, decode):
        matched, sender = 0, None
        if split > 0:
            kv_addr, matched = await decode.prep_recv(req, end=split)
            if split > matched:
                try:
                    sender = prefill or self.pick_prefill()
                    await sender.remote_send(req, kv_addr, decode.id, begin=matched, end=split)
                except (EngineDown, TransferFailed) as exc:
                    if not self.params.failover or not decode.healthy:
                        raise
                    await decode.release(req.id)  # the reservation will not be filled
                    self.tag(req, failover="local_prefill", failover_reason=type(exc).__name__)
                    split, matched, sender = 0, 0, None
        self.tag(req, prefill=sender and sender.id, decode=decode.id, split=split, matched=matched)
        async for chunk in decode.start_generate(req, begin=split):
            yield chunk


@register("pd")
class PrefillDecode(DisaggregatedStrategy):
    """prep_recv(end=-1) on decode, remote_send(begin=matched, end=-1) from prefill,
    start_generate(begin=-1) on decode."""

    def generate(self, req: Request):
        self.tag(req, mode="pd")
        return self.split_flow(req, req.prompt_len - 1)
