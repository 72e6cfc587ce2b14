"""Balanced PD: the decode engine also prefills the last `ratio` share of the prompt.

Plain PD leaves decode engines idle on prefill while prefill engines queue up when prompts are
long: decode steps are memory-bound and have spare compute. Balanced PD moves the tail of each
prompt to the decode engine (chunked prefill piggybacks it on decode steps), so prefill engines
finish sooner and less KV crosses the link. It wins when prefill is the bottleneck (long prompts,
short outputs, few prefill engines); ratio 0 is plain PD, and ratios near 1 approach data
parallel on the decode engines (TPOT suffers from the prefill they now run).

Split: decode computes max(1, round(ratio * n)) tokens, so split = n - that. The prefill engine
sends KV of prompt[:split]; the boundary page may be partial: the sender writes its first tokens,
the decode engine computes the rest of it in place. A 1-token prompt has split 0: no transfer.
"""
from __future__ import annotations

import math

from pydantic import Field

from core_api.strategy import register
from core_api.types import Request
from strategies.pd import DisaggregatedStrategy, RoleParams


class BalancedParams(RoleParams):
    ratio: float = Field(0.2, ge=0, lt=1)  # share of each prompt the decode engine prefills


def split_at(prompt_len: int, ratio: float) -> int:
    """Prompt position where the prefill engine stops; the decode engine always computes >= 1 token."""
    local = max(1, math.floor(ratio * prompt_len + 0.5))
    return max(0, prompt_len - local)


@register("balanced_pd")
class BalancedPD(DisaggregatedStrategy):
    """prep_recv(end=split) on decode, remote_send(begin=matched, end=split) from prefill,
    start_generate(begin=split) on decode."""

    Params = BalancedParams

    def generate(self, req: Request):
        self.tag(req, mode="balanced_pd", ratio=self.params.ratio)
        return self.split_flow(req, split_at(req.prompt_len, self.params.ratio))
