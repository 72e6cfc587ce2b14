"""Engine scheduling limits and policy."""
from __future__ import annotations

from pydantic import BaseModel, Field

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


class SchedulerConfig(BaseModel, extra="forbid"):
    num_pages: int = Field(gt=0)
    page_size: int = Field(16, gt=0)
    max_num_batched_tokens: int = Field(2048, gt=0)
    max_num_seqs: int = Field(256, gt=0)
    max_model_len: int = Field(32768, gt=0)
    policy: SchedulingPolicy = SchedulingPolicy()
    reservation_timeout_s: float = Field(30.0, gt=0)
    eos_token_id: int | None = None


__all__ = ["RequestRejected", "SchedulerConfig", "SchedulingPolicy"]
