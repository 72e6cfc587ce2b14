"""The CUDA attention path: flashinfer's paged prefill/decode wrappers on the same page table.

Import this module only on a machine with CUDA (real.attention.make_attention does); the
flashinfer import itself is deferred to first use, so a missing package is reported by
`flashinfer_available()` rather than an ImportError at import time.
"""
from __future__ import annotations

import importlib.util

import torch

from real.attention_metadata import AttentionMetadata

WORKSPACE_BYTES = 128 * 1024 * 1024


def flashinfer_available() -> bool:
    """True when CUDA is present and the flashinfer package can be imported."""
    return torch.cuda.is_available() and importlib.util.find_spec("flashinfer") is not None


class FlashInferAttention:
    """Batched paged attention with flashinfer's plan/run API.

    `plan` runs once per forward: an all-decode batch uses BatchDecodeWithPagedKVCacheWrapper
    (tensor-core kernels, so any GQA group size works), anything else the causal
    BatchPrefillWithPagedKVCacheWrapper, whose causal mask is bottom-right aligned, the same
    convention as the torch reference. `__call__` runs the planned kernel on one layer.
    """

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, device: torch.device, dtype: torch.dtype):
        import flashinfer

        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.dtype = dtype
        self._workspace = torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self._prefill = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self._workspace, "NHD")
        self._decode = flashinfer.BatchDecodeWithPagedKVCacheWrapper(self._workspace, "NHD", use_tensor_cores=True)
        self._active = None

    def plan(self, meta: AttentionMetadata) -> None:
        common = (self.num_heads, self.num_kv_heads, self.head_dim, meta.page_size)
        if meta.all_decode:
            self._decode.plan(meta.kv_page_indptr, meta.kv_page_indices, meta.kv_last_page_len, *common,
                              pos_encoding_mode="NONE", q_data_type=self.dtype, kv_data_type=self.dtype)
            self._active = self._decode
        else:
            self._prefill.plan(meta.qo_indptr, meta.kv_page_indptr, meta.kv_page_indices, meta.kv_last_page_len,
                               *common, causal=True, pos_encoding_mode="NONE", q_data_type=self.dtype,
                               kv_data_type=self.dtype)
            self._active = self._prefill

    def __call__(self, q: torch.Tensor, kv_layer: torch.Tensor, meta: AttentionMetadata) -> torch.Tensor:
        if self._active is None:
            raise RuntimeError("FlashInferAttention.plan(meta) must run before the layers")
        return self._active.run(q.to(self.dtype).contiguous(), kv_layer)
