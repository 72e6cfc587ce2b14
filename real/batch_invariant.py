"""Row-local ops whose result for one token row never depends on the other rows in the batch.

Why this exists: float32 CPU GEMM picks its kernel (and so its summation order) from the
matrix shape, so `linear(x)[i]` changes in the last bits when rows are added to `x`. Greedy
tokens then differ between "alone" and "batched", and between one-shot and chunked prefill.
The strategies' exactness tests (single engine vs PD vs migration) need identical bits.

The trick for linears: a batched matmul of T independent [1, in] x [in, out] products. Each
product has the same shape whatever T is, so it takes the same kernel and reduction order,
and bmm is ~2x faster than a Python loop of F.linear over rows. Elementwise ops with a
transcendental inside (SiLU's exp) are applied row by row: their vectorised body and scalar
tail round differently, and which elements land in the tail depends on the tensor's length.
Multiplies, adds, rsqrt and the per-row mean are correctly rounded or row-local already.

With `invariant=False` every function falls back to the ordinary fast batched op.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def linear(x: torch.Tensor, weight: torch.Tensor, invariant: bool) -> torch.Tensor:
    """x [T, in] @ weight[out, in].T -> [T, out]."""
    if not invariant or x.shape[0] == 0:
        return F.linear(x, weight)
    t = x.shape[0]
    w = weight.t().unsqueeze(0).expand(t, -1, -1)
    return torch.bmm(x.unsqueeze(1), w).squeeze(1)


def silu_mul(gate: torch.Tensor, up: torch.Tensor, invariant: bool) -> torch.Tensor:
    """SwiGLU activation silu(gate) * up for [T, ffn] tensors."""
    if not invariant:
        return F.silu(gate) * up
    act = torch.empty_like(gate)
    for i in range(gate.shape[0]):
        act[i] = F.silu(gate[i])
    return act * up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm in float32 (as HF Llama does), cast back to x's dtype before the weight."""
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)
