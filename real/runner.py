"""ModelRunner: one scheduler Batch in, one sampled token id per sampling row out.

The scheduler says which rows of which sequences run (`seqs/starts/num_new/sample`) and which
pages each sequence owns; the runner flattens that into input ids, positions and the paged
attention metadata, runs the model once, and samples. Rows with `num_new == 0` (a send whose
whole range the prefix cache already held) have nothing to compute and are skipped.

Sampling is reproducible per request, not per batch: greedy is an argmax; with a temperature,
each token draws from a torch.Generator seeded by (request seed, token index), so the same
request gives the same tokens on any engine, in any batch, after any preemption.
"""
from __future__ import annotations

import zlib

import numpy as np
import torch

from core_api.scheduler import Batch
from core_api.sequence import Sequence
from real.attention import SeqSpec, build_metadata
from real.model import LlamaModel


class ModelRunner:
    def __init__(self, model: LlamaModel, kv_pool: torch.Tensor, page_size: int) -> None:
        self.model, self.kv_pool, self.page_size = model, kv_pool, page_size
        self.device = model.device
        self.forward_tokens = 0

    @torch.inference_mode()
    def execute(self, batch: Batch) -> list[int]:
        specs: list[SeqSpec] = []
        ids: list[np.ndarray] = []
        sampled: list[Sequence] = []
        for seq, start, n, sample in zip(batch.seqs, batch.starts, batch.num_new, batch.sample):
            if n == 0:
                continue
            ids.append(seq.token_ids(start, start + n))
            specs.append(SeqSpec(n, start + n, seq.pages, sample))
            if sample:
                sampled.append(seq)
        if not specs:
            return []
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


def sample_tokens(logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
    """One id per row: argmax for greedy rows, a seeded draw for the others."""
    greedy = logits.argmax(dim=-1).tolist()
    out = []
    for row, (seq, token) in enumerate(zip(seqs, greedy)):
        sp = seq.req.sampling
        out.append(token if sp.greedy else _draw(logits[row], sp.temperature, sp.top_p,
                                                 _seed(seq.req.id, sp.seed, len(seq.output))))
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
