"""Page metadata of one flattened batch: which query rows belong to which sequence, which KV
pages each sequence reads, and which slot each new token's K/V is written to.

The layout is flashinfer's CSR page table, so the CUDA kernels consume it as is and the CPU
reference reads exactly the same tensors:

    qo_indptr        [B+1] int32  rows of sequence b are qo_indptr[b]:qo_indptr[b+1] of the batch
    kv_page_indptr   [B+1] int32  pages of sequence b are kv_page_indices[kv_page_indptr[b]:...[b+1]]
    kv_page_indices  [nnz] int32  page ids in the KV pool, in position order
    kv_last_page_len [B]   int32  valid slots in each sequence's last page (1..page_size)
    slot_page        [T]   int64  page the new token's K/V is written to
    slot_offset      [T]   int64  slot inside that page
    positions        [T]   int64  absolute position of each new token (for RoPE)
    sample_rows      [S]   int64  batch rows whose logits the model returns (last row of each
                                  sequence built with sample=True), in sequence order

A sequence's new tokens are the last `num_new_tokens` positions of its context (KV of the
earlier positions is already in its pages: an earlier chunk, a prefix-cache hit, or pages
received from another engine). Query at position p attends to KV positions 0..p.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch


class SeqSpec(NamedTuple):
    """One sequence's part of a batch (a plain tuple in this order works too)."""

    num_new_tokens: int  # query rows this step (prefill chunk length, or 1 for decode)
    context_len: int  # tokens with KV after this step, including the new ones
    page_ids: Sequence[int]  # the sequence's pages in position order (extra reserved ids are ignored)
    sample: bool  # return logits for the sequence's last new token


@dataclass(slots=True)
class AttentionMetadata:
    """Device tensors (see module docstring) plus host copies of the lengths, so CPU loops
    and flashinfer planning never have to read back from the device."""

    page_size: int
    qo_indptr: torch.Tensor
    kv_page_indptr: torch.Tensor
    kv_page_indices: torch.Tensor
    kv_last_page_len: torch.Tensor
    slot_page: torch.Tensor
    slot_offset: torch.Tensor
    positions: torch.Tensor
    sample_rows: torch.Tensor
    q_lens: list[int]
    kv_lens: list[int]
    page_indptr_host: list[int]

    @property
    def num_seqs(self) -> int:
        return len(self.q_lens)

    @property
    def num_tokens(self) -> int:
        return int(sum(self.q_lens))

    @property
    def num_samples(self) -> int:
        return int(self.sample_rows.shape[0])

    @property
    def all_decode(self) -> bool:
        """Every sequence has exactly one new token (the decode kernel applies)."""
        return all(n == 1 for n in self.q_lens)


def build_metadata(
    seqs: Sequence[SeqSpec | tuple], page_size: int, device: torch.device | str = "cpu"
) -> AttentionMetadata:
    """Build the metadata of a batch from plain lists, validating page coverage."""
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    qo, kv_ind, pages, last = [0], [0], [], []
    slot_page, slot_off, positions, sample_rows, q_lens, kv_lens = [], [], [], [], [], []
    for i, (n_new, ctx, page_ids, sample) in enumerate(seqs):
        if not 1 <= n_new <= ctx:
            raise ValueError(f"seq {i}: need 1 <= num_new_tokens ({n_new}) <= context_len ({ctx})")
        n_pages = -(-ctx // page_size)
        if len(page_ids) < n_pages:
            raise ValueError(f"seq {i}: context {ctx} needs {n_pages} pages of {page_size}, got {len(page_ids)}")
        own = [int(p) for p in page_ids[:n_pages]]
        pages.extend(own)
        kv_ind.append(kv_ind[-1] + n_pages)
        last.append(ctx - (n_pages - 1) * page_size)
        qo.append(qo[-1] + n_new)
        for pos in range(ctx - n_new, ctx):
            slot_page.append(own[pos // page_size])
            slot_off.append(pos % page_size)
            positions.append(pos)
        if sample:
            sample_rows.append(qo[-1] - 1)
        q_lens.append(n_new)
        kv_lens.append(ctx)

    def i32(xs: list[int]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.int32, device=device)

    def i64(xs: list[int]) -> torch.Tensor:
        return torch.tensor(xs, dtype=torch.int64, device=device)

    return AttentionMetadata(
        page_size=page_size, qo_indptr=i32(qo), kv_page_indptr=i32(kv_ind), kv_page_indices=i32(pages),
        kv_last_page_len=i32(last), slot_page=i64(slot_page), slot_offset=i64(slot_off),
        positions=i64(positions), sample_rows=i64(sample_rows), q_lens=q_lens, kv_lens=kv_lens,
        page_indptr_host=kv_ind,
    )
