"""Paged attention over one layer of the KV pool, `kv_layer = pool[l]` of shape
[num_pages, 2, page_size, num_kv_heads, head_dim] (flashinfer's NHD layout, dim 1 = K, V).

Every backend reads the same AttentionMetadata. `TorchPagedAttention` is the reference and
the CPU path (it also runs on CUDA); `real.flashinfer_attention.FlashInferAttention` is the
fast CUDA path. `make_attention` picks one. A backend is used as:

    backend.plan(meta)                 # once per forward (flashinfer schedules its kernels here)
    write_kv(pool[l], k, v, meta)      # per layer: store the new tokens' K/V in their slots
    out = backend(q, pool[l], meta)    # per layer: q [T, H, D] -> out [T, H, D]
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from real.attention_metadata import AttentionMetadata, SeqSpec, build_metadata

__all__ = [
    "AttentionMetadata",
    "SeqSpec",
    "TorchPagedAttention",
    "build_metadata",
    "gather_kv",
    "make_attention",
    "write_kv",
]


def write_kv(kv_layer: torch.Tensor, k: torch.Tensor, v: torch.Tensor, meta: AttentionMetadata) -> None:
    """Store k, v [T, kv_heads, head_dim] at each token's (slot_page, slot_offset)."""
    kv_layer[meta.slot_page, 0, meta.slot_offset] = k.to(kv_layer.dtype)
    kv_layer[meta.slot_page, 1, meta.slot_offset] = v.to(kv_layer.dtype)


def gather_kv(kv_layer: torch.Tensor, meta: AttentionMetadata, seq: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous K, V [context_len, kv_heads, head_dim] of sequence `seq`, read from its pages."""
    a, b = meta.page_indptr_host[seq], meta.page_indptr_host[seq + 1]
    pages = meta.kv_page_indices[a:b]
    length = meta.kv_lens[seq]
    _, _, _page_size, heads, dim = kv_layer.shape
    k = kv_layer[pages, 0].reshape(-1, heads, dim)[:length]
    v = kv_layer[pages, 1].reshape(-1, heads, dim)[:length]
    return k, v


class TorchPagedAttention:
    """Causal paged attention in plain torch, one sequence at a time.

    Default mode: scaled_dot_product_attention per sequence with a bottom-right causal mask.
    Batch-invariant mode: one query row at a time over exactly K/V[0..p] (a slice, not a mask),
    so the shapes, and hence kernels and summation order, of a query's computation depend
    only on its position p; never on the chunk it came in or the batch around it.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, invariant: bool = False):
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.group = num_heads // num_kv_heads
        self.scale = 1.0 / math.sqrt(head_dim)
        self.invariant = invariant

    def plan(self, meta: AttentionMetadata) -> None:
        """Nothing to schedule; present so all backends are driven the same way."""

    def __call__(self, q: torch.Tensor, kv_layer: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        out = torch.empty_like(q)
        row = 0
        for seq, n in enumerate(meta.q_lens):
            k, v = gather_kv(kv_layer, meta, seq)
            q_seq = q[row:row + n]
            if self.invariant:
                out[row:row + n] = self._per_query(q_seq, k, v)
            else:
                out[row:row + n] = self._sdpa(q_seq, k, v)
            row += n
        return out

    def _sdpa(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, length = q.shape[0], k.shape[0]
        mask = None
        if n > 1:  # new tokens sit at the end of the context: bottom-right aligned causal mask
            mask = torch.ones(n, length, dtype=torch.bool, device=q.device).tril(length - n)
        o = F.scaled_dot_product_attention(
            q.transpose(0, 1).unsqueeze(0), k.transpose(0, 1).unsqueeze(0).to(q.dtype),
            v.transpose(0, 1).unsqueeze(0).to(q.dtype), attn_mask=mask, scale=self.scale, enable_gqa=True,
        )
        return o.squeeze(0).transpose(0, 1)

    def _per_query(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        n, length = q.shape[0], k.shape[0]
        kt = k.to(q.dtype).permute(1, 2, 0)  # [kv_heads, D, L]; strides independent of L
        vt = v.to(q.dtype).permute(1, 0, 2)  # [kv_heads, L, D]
        out = torch.empty_like(q)
        for j in range(n):
            p1 = length - n + j + 1  # keys 0..p inclusive
            qh = q[j].reshape(self.num_kv_heads, self.group, self.head_dim)
            scores = torch.matmul(qh, kt[:, :, :p1]).float() * self.scale
            probs = torch.softmax(scores, dim=-1).to(q.dtype)
            out[j] = torch.matmul(probs, vt[:, :p1]).reshape(self.num_heads, self.head_dim)
        return out


def make_attention(num_heads: int, num_kv_heads: int, head_dim: int, device: torch.device | str,
                   dtype: torch.dtype, invariant: bool = False):
    """flashinfer on CUDA when it is installed and supports the shape (and invariance is not
    asked for); the torch reference otherwise. flashinfer is imported only here, only with
    CUDA present: its import fails on CPU-only machines."""
    device = torch.device(device)
    if device.type == "cuda" and not invariant and head_dim in (64, 128, 256):
        from real.flashinfer_attention import FlashInferAttention, flashinfer_available

        if flashinfer_available():
            return FlashInferAttention(num_heads, num_kv_heads, head_dim, device, dtype)
    return TorchPagedAttention(num_heads, num_kv_heads, head_dim, invariant=invariant)
