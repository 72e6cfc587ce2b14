"""ModelRunner: one scheduler Batch in, one sampled token id per sampling row out.

The scheduler says which rows of which sequences run (`seqs/starts/num_new/sample`) and which
pages each sequence owns; the runner flattens that into input ids, positions and the paged
attention metadata, runs the model once, and samples. Rows with `num_new == 0` (a send whose
whole range the prefix cache already held) have nothing to compute and are skipped.

Sampling is reproducible per request, not per batch: greedy is an argmax; with a temperature,
each token draws from a torch.Generator seeded by (request seed, token index), so the same
request gives the same tokens on any engine, in any batch, after any preemption.

One sequence never fails its batch-mates: a row with non-finite logits or a failing draw fails
that sequence alone (`StepTokens.failed`), and a forward pass that raises is run again one
sequence at a time to find which sequences raise. Re-running is safe: a sequence's rows write the
same KV positions with the same values whichever batch they run in (bit-identical values in
batch-invariant mode), so the batch-mates' tokens are unchanged.
"""
from __future__ import annotations

import logging
import zlib
from dataclasses import dataclass, field

import numpy as np
import torch

from core_api.scheduler import Batch
from core_api.sequence import Sequence
from real.attention import SeqSpec, build_metadata
from real.model import LlamaModel

log = logging.getLogger(__name__)


@dataclass(slots=True)
class StepTokens:
    """One id per sampling row of the batch (0 in the rows of failed sequences, never read), and
    the sequences that failed in this step with the reason."""

    tokens: list[int] = field(default_factory=list)
    failed: list[tuple[Sequence, str]] = field(default_factory=list)


class ModelRunner:
    def __init__(self, model: LlamaModel, kv_pool: torch.Tensor, page_size: int) -> None:
        self.model, self.kv_pool, self.page_size = model, kv_pool, page_size
        self.device = model.device
        self.forward_tokens = 0

    @torch.inference_mode()
    def execute(self, batch: Batch) -> StepTokens:
        rows = list(zip(batch.seqs, batch.starts, batch.num_new, batch.sample))
        try:
            return self._run(rows)
        except Exception as exc:  # noqa: BLE001 - whatever one sequence raises must not fail the others
            if len(rows) == 1:
                return _failed(rows[0], exc)
            log.warning("forward pass of %d sequences failed (%s: %s); running them one by one",
                        len(rows), type(exc).__name__, exc)
        out = StepTokens()
        for row in rows:
            try:
                one = self._run([row])
            except Exception as exc:  # noqa: BLE001 - this sequence is the one that fails
                one = _failed(row, exc)
            out.tokens += one.tokens
            out.failed += one.failed
        return out

    def _run(self, rows: list[tuple[Sequence, int, int, bool]]) -> StepTokens:
        specs: list[SeqSpec] = []
        ids: list[np.ndarray] = []
        sampled: list[Sequence] = []
        for seq, start, n, sample in rows:
            if n == 0:
                continue
            ids.append(seq.token_ids(start, start + n))
            specs.append(SeqSpec(n, start + n, seq.pages, sample))
            if sample:
                sampled.append(seq)
        if not specs:
            return StepTokens()
        meta = build_metadata(specs, self.page_size, self.device)
        input_ids = torch.from_numpy(np.concatenate(ids).astype(np.int64)).to(self.device)
        self.forward_tokens += meta.num_tokens
        logits = self.model(input_ids, meta.positions, meta, self.kv_pool)
        return sample_tokens(logits, sampled)


    def warmup(self) -> None:
        """One throwaway forward into page 0 (free, so nothing reads what it writes): lazy kernel
        and allocator setup then happens at startup, not in the first request's TTFT."""
        meta = build_metadata([SeqSpec(2, 2, [0], True)], self.page_size, self.device)
        self.model(torch.zeros(2, dtype=torch.int64, device=self.device), meta.positions, meta, self.kv_pool)


def _failed(row: tuple[Sequence, int, int, bool], exc: Exception) -> StepTokens:
    """A row whose forward pass raised: its sequence fails (a placeholder token if it samples)."""
    seq, _, _, sample = row
    return StepTokens([0] if sample else [], [(seq, f"forward pass failed: {type(exc).__name__}: {exc}")])


def sample_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> StepTokens:
    """One id per row: argmax for greedy rows, a seeded draw for the others; a row whose logits
    are not all finite, or whose draw fails, fails its sequence alone."""
    finite = torch.isfinite(logits).all(dim=-1).tolist()
    greedy = logits.argmax(dim=-1).tolist()
    out = StepTokens()
    for row, (seq, token, ok) in enumerate(zip(seqs, greedy, finite)):
        sp = seq.req.sampling
        if not ok:
            out.failed.append((seq, "the model produced non-finite logits (inf or NaN) for this sequence"))
            token = 0
        elif not sp.greedy:
            try:
                token = _draw(logits[row], sp.temperature, sp.top_p, _seed(seq.req.id, sp.seed, len(seq.output)))
            except (RuntimeError, ValueError) as exc:  # e.g. probabilities that do not sum to a number
                out.failed.append((seq, f"sampling failed: {exc}"))
                token = 0
        out.tokens.append(token)
    return out


def _seed(req_id: str, seed: int | None, index: int) -> int:
    base = seed if seed is not None else zlib.crc32(req_id.encode())
    return (base * 1_000_003 + index) % (2**63)


def _draw(logits: torch.Tensor, temperature: float, top_p: float, seed: int) -> int:
    probs = torch.softmax(logits.float().cpu() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < top_p  # always keeps the most likely token
        probs = torch.zeros_like(probs).scatter_(0, order[keep], sorted_p[keep])
    gen = torch.Generator().manual_seed(seed)
    return int(torch.multinomial(probs, 1, generator=gen))
