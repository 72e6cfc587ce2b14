"""Greedy generation of one prompt with a private, contiguous KV pool: the ground truth that
paged, chunked, batched and multi-engine runs are compared against in tests. Not a serving
path: no scheduler, no sharing, one sequence."""
from __future__ import annotations

import torch

from real.attention import build_metadata
from real.model import LlamaModel


def greedy_generate(model: LlamaModel, prompt: list[int], max_new_tokens: int, page_size: int = 16,
                    eos_token_id: int | None = None) -> list[int]:
    """Prefill `prompt` in one forward, then decode greedily; stops early at eos_token_id."""
    if not prompt:
        raise ValueError("empty prompt")
    total = len(prompt) + max_new_tokens
    pages = list(range(-(-total // page_size)))
    pool = model.allocate_kv_pool(len(pages), page_size)
    out: list[int] = []
    new, ctx = list(prompt), 0
    while len(out) < max_new_tokens:
        ctx += len(new)
        meta = build_metadata([(len(new), ctx, pages, True)], page_size, model.device)
        ids = torch.tensor(new, dtype=torch.int64, device=model.device)
        token = int(model(ids, meta.positions, meta, pool)[0].argmax())
        out.append(token)
        if token == eos_token_id:
            break
        new = [token]
    return out
