"""KV pages between engines that share a GPU host, by CUDA IPC: no copy through the host.

The sender exports its KV pool's device allocation once (torch's CUDA IPC handle, what
torch.multiprocessing uses to share CUDA tensors between processes) and every chunk header names
that handle and the source pages; the receiver opens the peer's pool once, copies the pages
device to device into its own pages inside its loop (after checking the reservation is still
open, as with shared memory on CPU), waits for the copy, and acknowledges. The sender keeps its
pages until the acknowledgement, so they cannot change under the copy.

Engines on one GPU and engines on different GPUs of one host (with peer access) both work this
way; across hosts, pages take the zmq path.
"""
from __future__ import annotations

from typing import Any

import torch

from real.page_copy import DTYPES, copy_pages, dtype_name, page_bytes
from real.protocol import RemoteSend
from real.transport import Sender, Transport, TransportMeta


class CudaIpcMeta(TransportMeta):
    ipc: dict[str, Any]  # the sender pool's descriptor (export_pool)
    src_pages: list[int]


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


def open_pool(desc: dict[str, Any]) -> torch.Tensor:
    """The peer's pool as a tensor in this process (mapped, not copied)."""
    try:
        dtype = DTYPES[desc["dtype"]]
        storage = torch.UntypedStorage._new_shared_cuda(
            desc["device"], desc["handle"], desc["size"], desc["offset"], desc["ref_handle"], desc["ref_offset"],
            desc["event_handle"], desc["event_sync"])
        pool = torch.empty(0, dtype=dtype, device=f"cuda:{desc['device']}")
        pool.set_(storage, desc["storage_offset"], desc["shape"], desc["stride"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"malformed CUDA IPC pool descriptor: {exc}") from None
    return pool


class CudaIpcTransport(Transport, Sender):
    mode = "cuda_ipc"
    Meta = CudaIpcMeta
    cuda_only = True

    def __init__(self, local) -> None:
        super().__init__(local)
        self._desc: dict[str, Any] | None = None  # exported on the first send
        self._peers: dict[bytes, torch.Tensor] = {}

    def sender_for(self, dst: RemoteSend) -> Sender | None:
        return self if dst.dst_host == self.local.host else None

    def pack(self, src_ids: list[int]) -> tuple[CudaIpcMeta, list]:
        if self._desc is None:
            self._desc = export_pool(self.local.pool)
        return CudaIpcMeta(ipc=self._desc, src_pages=list(src_ids)), []

    def land(self, meta: CudaIpcMeta, frames: list, dst_ids: list[int]) -> int:
        pool = self.local.pool
        if pool.device.type != "cuda":
            raise ValueError("a cuda_ipc chunk reached an engine without a CUDA pool")
        handle = meta.ipc.get("handle")
        src = self._peers.get(handle)
        if src is None:
            src = open_pool(meta.ipc)
            self._peers[handle] = src
        copy_pages(pool, dst_ids, src, meta.src_pages)
        torch.cuda.synchronize(pool.device)  # landed before the acknowledgement frees the sender's pages
        return len(dst_ids) * page_bytes(pool)


TRANSPORT = CudaIpcTransport
