"""KV pages between engines that share a GPU host, by CUDA IPC: no copy through the host.

The sender exports its KV pool's device allocation once (torch's CUDA IPC handle, what
torch.multiprocessing uses to share CUDA tensors between processes) and every chunk header names
that handle and the source pages; the receiver opens the peer's pool once, copies the pages
device to device into its own pages inside its loop (after checking the reservation is still
open, as with shared memory on CPU), waits for the copy, and acknowledges. The sender keeps its
pages until the acknowledgement, so they cannot change under the copy.

Engines on one GPU and engines on different GPUs of one host (with peer access) both work this
way; across hosts, pages take the zmq path. Imported only on CUDA engines.
"""
from __future__ import annotations

from typing import Any

import torch

from real.transfer import DTYPES, copy_pages, dtype_name


def export_pool(pool: torch.Tensor) -> dict[str, Any]:
    """What another process needs to map `pool` (msgpack-able: ints, bytes, bools, lists)."""
    if pool.device.type != "cuda":
        raise ValueError("CUDA IPC needs a CUDA KV pool")
    storage = pool.untyped_storage()
    (device, handle, size, offset, ref_handle, ref_offset, event_handle, event_sync) = storage._share_cuda_()
    return {"device": int(device), "handle": bytes(handle), "size": int(size), "offset": int(offset),
            "ref_handle": bytes(ref_handle), "ref_offset": int(ref_offset), "event_handle": bytes(event_handle),
            "event_sync": bool(event_sync), "shape": list(pool.shape), "stride": list(pool.stride()),
            "storage_offset": int(pool.storage_offset()), "dtype": dtype_name(pool.dtype)}


def open_pool(desc: dict[str, Any], device: torch.device) -> torch.Tensor:
    """The peer's pool as a tensor on `device`'s process (mapped, not copied)."""
    try:
        dtype = DTYPES[desc["dtype"]]
        storage = torch.UntypedStorage._new_shared_cuda(
            desc["device"], desc["handle"], desc["size"], desc["offset"], desc["ref_handle"], desc["ref_offset"],
            desc["event_handle"], desc["event_sync"])
    except (KeyError, TypeError) as exc:
        raise ValueError(f"malformed CUDA IPC pool descriptor: {exc}") from None
    pool = torch.empty(0, dtype=dtype, device=f"cuda:{desc['device']}")
    pool.set_(storage, desc["storage_offset"], desc["shape"], desc["stride"])
    return pool


class CudaIpcTransport:
    """Sender side: names pages of this engine's exported pool."""

    mode = "cuda_ipc"

    def __init__(self, pool: torch.Tensor) -> None:
        self.desc = export_pool(pool)

    def pack(self, pool: torch.Tensor, src_ids: list[int]) -> tuple[dict, list]:
        return {"mode": "cuda_ipc", "ipc": self.desc, "src_pages": list(src_ids),
                "pool_shape": self.desc["shape"], "dtype": self.desc["dtype"]}, []


class CudaIpcPeers:
    """Receiver side: peers' pools opened once each, pages copied device to device."""

    def __init__(self) -> None:
        self._pools: dict[bytes, torch.Tensor] = {}

    def land(self, pool: torch.Tensor, desc: dict[str, Any], src_ids: list[int], dst_ids: list[int]) -> int:
        src = self._pools.get(desc.get("handle"))
        if src is None:
            src = open_pool(desc, pool.device)
            self._pools[desc["handle"]] = src
        if list(src.shape[:1]) + list(src.shape[2:]) != list(pool.shape[:1]) + list(pool.shape[2:]):
            raise ValueError(f"peer pool of shape {list(src.shape)} cannot fill pages of this pool {list(pool.shape)}")
        if len(src_ids) != len(dst_ids) or max(src_ids) >= src.shape[1] or min(src_ids) < 0:
            raise ValueError(f"{len(src_ids)} source pages for {len(dst_ids)} destination pages")
        copy_pages(pool, dst_ids, src, src_ids)
        torch.cuda.synchronize(pool.device)  # landed before the acknowledgement frees the sender's pages
        return len(dst_ids) * pool[:, 0].numel() * pool.element_size()
