"""Engine scheduling limits and the error for requests that can never run."""
from __future__ import annotations

from pydantic import BaseModel, Field


class SchedulerConfig(BaseModel, extra="forbid"):
    num_pages: int = Field(gt=0)
    page_size: int = Field(16, gt=0)
    max_num_batched_tokens: int = Field(2048, gt=0)
    max_num_seqs: int = Field(256, gt=0)
    max_model_len: int = Field(32768, gt=0)
    watermark: float = Field(0.01, ge=0, lt=1)
    reservation_timeout_s: float = Field(30.0, gt=0)
    eos_token_id: int | None = None


class RequestRejected(ValueError):
    """The request can never run on this engine (too long for its context or its KV memory)."""
