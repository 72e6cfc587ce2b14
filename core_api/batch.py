"""One step's work as the scheduler hands it to a backend, and what the step produced."""
from __future__ import annotations

from dataclasses import dataclass, field

from core_api.sequence import GENERATE, Sequence
from core_api.step import StepFeatures


@dataclass(slots=True)
class Batch:
    """One step's work: rows [starts[i], starts[i] + num_new[i]) of seqs[i]."""

    seqs: list[Sequence] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)
    sample: list[bool] = field(default_factory=list)
    features: StepFeatures = field(default_factory=StepFeatures)

    def __len__(self) -> int:
        return len(self.seqs)

    def add(self, seq: Sequence, n: int) -> None:
        """Schedule rows [seq.num_computed, + n) of seq; keep the cost-model features in step.
        The chunk that completes a generating sequence's known tokens samples its next token."""
        start = seq.num_computed
        sample = seq.kind == GENERATE and start + n == seq.known_len
        self.seqs.append(seq)
        self.starts.append(start)
        self.num_new.append(n)
        self.sample.append(sample)
        f = self.features
        if start >= seq.prompt_len and n == 1:
            f.decode_seqs += 1
            f.decode_context += start + 1
            if start >= f.decode_max_context:
                f.decode_max_context = start + 1
        else:
            f.prefill_tokens += n
            f.prefill_seqs += 1
            f.prefill_attn += n * (start + n / 2)
            f.prefill_context += start + n
        if sample:
            f.sampled += 1


@dataclass(slots=True)
class ScheduleOutput:
    batch: Batch
    admitted_receives: list[Sequence]
    failed: list[Sequence]
    preempted: list[Sequence]


@dataclass(slots=True)
class StepResult:
    sampled: list[Sequence]  # got one token this step
    finished: list[Sequence]  # generation ended; pages released
    sends: list[tuple[Sequence, int, int]]  # SEND sequences that computed positions [a, b)
