"""Pages as one raw frame after the chunk header: works across hosts.

The sender gathers `pool[:, ids]` into one contiguous buffer (GPU pools staged through pinned host
memory) and sends it after the header; the receiver checks its shape against its own pool and
scatters it into its pages.
"""
from __future__ import annotations

import torch

from real.page_copy import DTYPES, dtype_name, gather_pages, scatter_pages
from real.transport import Sender, Transport, TransportMeta


class ZmqMeta(TransportMeta):
    shape: list[int]
    dtype: str


class ZmqTransport(Transport, Sender):
    mode = "zmq"
    Meta = ZmqMeta

    def pack(self, src_ids: list[int]) -> tuple[ZmqMeta, list]:
        data = gather_pages(self.local.pool, src_ids)
        if data.device.type != "cpu":
            staged = torch.empty(data.shape, dtype=data.dtype, pin_memory=True)
            staged.copy_(data, non_blocking=True)
            torch.cuda.current_stream(data.device).synchronize()
            data = staged
        meta = ZmqMeta(shape=list(data.shape), dtype=dtype_name(data.dtype))
        return meta, [memoryview(data.view(torch.uint8).reshape(-1).numpy())]

    def land(self, meta: ZmqMeta, frames: list, dst_ids: list[int]) -> int:
        pool = self.local.pool
        want = [pool.shape[0], len(dst_ids), *pool.shape[2:]]
        if meta.shape != want or meta.dtype not in DTYPES or len(frames) != 1:
            raise ValueError(f"KV chunk of shape {meta.shape} {meta.dtype} in {len(frames)} frames; "
                             f"this pool wants {want} {dtype_name(pool.dtype)} in 1 frame")
        buf = frames[0].buffer if hasattr(frames[0], "buffer") else frames[0]
        data = torch.frombuffer(buf, dtype=DTYPES[meta.dtype])
        if data.numel() != torch.Size(want).numel():
            raise ValueError(f"KV frame holds {data.numel()} values, header says {want}")
        scatter_pages(pool, dst_ids, data.view(want))
        return data.numel() * data.element_size()


TRANSPORT = ZmqTransport
