"""Same-host CPU engines: every pool lives in a file under /dev/shm, so a chunk only names the
sender's pool file and page ids, and the receiver copies straight from the sender's pool into its
own (one memcpy, no socket).

The receiver does the copy, in its own loop, after checking that the reservation is still open,
so an expired reservation can never be overwritten; the sender keeps its pages until the
acknowledgement. A chunk naming the receiver's own pool is refused: copying from ourselves would
hand one request's KV to another.
"""
from __future__ import annotations

from typing import Any

import torch

from real.page_copy import DTYPES, copy_pages, dtype_name, page_bytes
from real.protocol import RemoteSend
from real.shared_pool import SharedPool, shm_usable
from real.transport import Sender, Transport, TransportMeta


class ShmMeta(TransportMeta):
    shm_name: str
    src_pages: list[int]
    pool_shape: list[int]
    dtype: str


class ShmTransport(Transport, Sender):
    mode = "shm"
    Meta = ShmMeta

    def __init__(self, local) -> None:
        super().__init__(local)
        self._peers: dict[str, SharedPool] = {}

    @classmethod
    def make_pool(cls, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> SharedPool | None:
        return SharedPool.create(shape, dtype) if shm_usable(device) else None

    def sender_for(self, dst: RemoteSend) -> Sender | None:
        return self if self.local.shared is not None and dst.dst_host == self.local.host else None

    def hello_fields(self) -> dict[str, Any]:
        return {"shm": self.local.shared.path} if self.local.shared is not None else {}

    def pack(self, src_ids: list[int]) -> tuple[ShmMeta, list]:
        shared = self.local.shared
        return ShmMeta(shm_name=shared.path, src_pages=list(src_ids), pool_shape=list(shared.shape),
                       dtype=dtype_name(shared.dtype)), []

    def land(self, meta: ShmMeta, frames: list, dst_ids: list[int]) -> int:
        own = self.local.shared
        if own is not None and meta.shm_name == own.path:
            raise ValueError("refusing a KV chunk that names this engine's own pool as its source")
        if meta.dtype not in DTYPES:
            raise ValueError(f"KV pool dtype {meta.dtype!r} unknown; known: {', '.join(DTYPES)}")
        peer = self._peers.get(meta.shm_name)
        if peer is None or list(peer.shape) != meta.pool_shape:
            peer = SharedPool.attach(meta.shm_name, tuple(meta.pool_shape), DTYPES[meta.dtype])
            self._peers[meta.shm_name] = peer
        copy_pages(self.local.pool, dst_ids, peer.tensor, meta.src_pages)
        return len(dst_ids) * page_bytes(self.local.pool)


TRANSPORT = ShmTransport
