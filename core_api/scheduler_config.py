"""Engine scheduling limits and policy: defined once, embedded in both backends' engine configs.

`SchedulerLimits` holds the fields a user sets on an engine (sim's EngineConfig and the real
EngineSpec both inherit them); `SchedulerConfig` is what the one shared Scheduler takes: those
limits plus what the engine knows at start (its page count, the model's EOS). A backend may give
some limits other defaults (a CPU engine's token budget is smaller) with `limit_default`,
which keeps each field's constraints in this one place.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field
from pydantic.fields import FieldInfo

from core_api.errors import RequestRejected


class SchedulingPolicy(BaseModel, extra="forbid", frozen=True):
    """How the one shared scheduler admits and keeps work; the knobs where serving engines differ.

    The defaults are this project's engines. `vllm()` is vLLM v1's scheduler (0.19), for replaying
    its runs: an admission must fit the whole known sequence, not just its first chunk
    (`scheduler_reserve_full_isl`, which keeps chunked prefill from over-admitting and thrashing),
    nothing new is admitted in a step that had to preempt, and no watermark is kept.
    """

    watermark: float = Field(0.01, ge=0, lt=1, description="share of pages new admissions leave free")
    admit_whole_sequence: bool = Field(False, description=(
        "admit a waiting sequence only if pages for all its known tokens are free, not only its first chunk's"))
    admit_after_preemption: bool = Field(True, description="admit waiting sequences in a step that preempted")
    prefix_caching: bool = Field(True, description="reuse cached KV pages of equal prompt prefixes")
    reservation_share: float = Field(0.5, gt=0, lt=1, description=(
        "most of the pages reservations (prep_recv) may hold; the rest is kept for the engine's own "
        "running sequences and outgoing sends, so no pattern of calls can deadlock engines (see core_api.engine)"))

    @classmethod
    def vllm(cls, prefix_caching: bool = True) -> SchedulingPolicy:
        return cls(watermark=0.0, admit_whole_sequence=True, admit_after_preemption=False,
                   prefix_caching=prefix_caching)


class SchedulerLimits(BaseModel):
    """What an engine's scheduler is configured with, the same fields on both backends."""

    page_size: int = Field(16, gt=0)
    max_num_batched_tokens: int = Field(2048, gt=0, description="tokens one step may compute")
    max_num_seqs: int = Field(256, gt=0, description="sequences one step may hold")
    max_model_len: int = Field(32768, gt=0, description="prompt + output tokens of one request")
    reservation_timeout_s: float = Field(30.0, gt=0, description=(
        "a prep_recv reservation nothing fills for this long is reclaimed (see core_api.engine)"))
    policy: SchedulingPolicy = SchedulingPolicy()  # admission knobs; SchedulingPolicy.vllm() replays vLLM

    def scheduler_config(self, num_pages: int, eos_token_id: int | None = None, **override: Any) -> SchedulerConfig:
        """The Scheduler's config: these limits (`override` replaces some) on `num_pages` pages."""
        limits = {name: getattr(self, name) for name in SchedulerLimits.model_fields}
        return SchedulerConfig(num_pages=num_pages, eos_token_id=eos_token_id, **{**limits, **override})


def limit_default(name: str, value: Any) -> Any:
    """SchedulerLimits' field `name` with another default and the same constraints, for a
    backend's engine config: `max_num_seqs: int = limit_default("max_num_seqs", 64)`."""
    return FieldInfo.merge_field_infos(SchedulerLimits.model_fields[name], default=value)


class SchedulerConfig(SchedulerLimits, extra="forbid"):
    num_pages: int = Field(gt=0)
    eos_token_id: int | None = None


__all__ = ["RequestRejected", "SchedulerConfig", "SchedulerLimits", "SchedulingPolicy"]
