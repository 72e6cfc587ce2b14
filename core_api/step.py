"""What one engine step computes, summarised for cost models (sim) and calibration (real)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class StepFeatures:
    """Aggregate work of one batched forward pass.

    prefill_attn is sum over prefill chunks of new_tokens * (cached context + new_tokens / 2):
    the causal attention work of the chunk. prefill_context is sum over prefill chunks of
    (cached context + new_tokens): the KV each chunk reads, which is what a short chunk over a
    long context (PD's one-token prefill on the decode engine) pays for, where prefill_attn
    barely grows. decode_context is the sum of context lengths read by decoding sequences (the
    KV bytes a decode step streams from memory); decode_max_context the longest of them (a
    batch of mixed lengths runs its attention kernel a little longer than a uniform one).
    """

    prefill_tokens: int = 0
    prefill_seqs: int = 0
    prefill_attn: float = 0.0
    prefill_context: int = 0
    decode_seqs: int = 0
    decode_context: int = 0
    decode_max_context: int = 0
    sampled: int = 0  # rows that go through the LM head and sampler

    @property
    def total_tokens(self) -> int:
        return self.prefill_tokens + self.decode_seqs

    @property
    def empty(self) -> bool:
        return self.prefill_tokens == 0 and self.decode_seqs == 0


STEP_FEATURES = tuple(StepFeatures.__dataclass_fields__)
