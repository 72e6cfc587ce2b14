"""Copies of KV pages between pools and buffers, the building blocks of every transport.

A pool is [layers, pages, 2, page_size, kv_heads, head_dim]; "page i" is pool[:, i].
"""
from __future__ import annotations

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def page_bytes(pool: torch.Tensor) -> int:
    """Bytes of one page of every layer."""
    return pool[:, 0].numel() * pool.element_size()


def gather_pages(pool: torch.Tensor, page_ids: list[int]) -> torch.Tensor:
    """Pages `page_ids` of every layer as one contiguous [layers, n, 2, ps, heads, dim] tensor."""
    idx = torch.tensor(page_ids, dtype=torch.int64, device=pool.device)
    return pool.index_select(1, idx)


def scatter_pages(pool: torch.Tensor, page_ids: list[int], data: torch.Tensor) -> None:
    """Write `data` ([layers, n, ...] on any device) into pages `page_ids` of `pool`."""
    idx = torch.tensor(page_ids, dtype=torch.int64, device=pool.device)
    pool.index_copy_(1, idx, data.to(pool.device, non_blocking=True))


def runs(dst_ids: list[int], src_ids: list[int]) -> list[tuple[int, int, int]]:
    """(dst start, src start, length) of maximal runs where both id lists are consecutive."""
    out: list[tuple[int, int, int]] = []
    for d, s in zip(dst_ids, src_ids):
        if out and out[-1][0] + out[-1][2] == d and out[-1][1] + out[-1][2] == s:
            out[-1] = (out[-1][0], out[-1][1], out[-1][2] + 1)
        else:
            out.append((d, s, 1))
    return out


def copy_pages(dst: torch.Tensor, dst_ids: list[int], src: torch.Tensor, src_ids: list[int]) -> None:
    """dst[:, dst_ids] = src[:, src_ids] as one strided copy per run of consecutive pages:
    a single pass over the bytes (fancy indexing would gather into a temporary first).
    The source page ids are checked against the source pool: they come from a peer."""
    if dst.shape[:1] + dst.shape[2:] != src.shape[:1] + src.shape[2:]:
        raise ValueError(f"pages of a pool of shape {list(src.shape)} cannot fill pages of a pool of shape "
                         f"{list(dst.shape)}")
    if len(dst_ids) != len(src_ids):
        raise ValueError(f"{len(src_ids)} source pages for {len(dst_ids)} destination pages")
    if src_ids and not 0 <= min(src_ids) <= max(src_ids) < src.shape[1]:
        raise ValueError(f"source pages {src_ids[:8]} outside a pool of {src.shape[1]} pages")
    for d, s, n in runs(dst_ids, src_ids):
        dst[:, d:d + n].copy_(src[:, s:s + n])
