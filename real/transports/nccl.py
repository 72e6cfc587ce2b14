"""NCCL KV transport for GPU engines (torch.distributed point-to-point).

RealCluster puts the engines it launches with transport "nccl" in one process group (rank per
engine, TCP rendezvous on loopback, or any init method for engines on several nodes). A chunk is
then a msgpack header on the control socket plus a matching NCCL send/recv pair: the sender
gathers the pages on its GPU and posts `isend` right after the header; the receiver posts the
`irecv` when the header arrives and scatters into its pool. NCCL matches point-to-point
operations between two ranks in order, and headers travel in order on the same zmq connection,
so the pairs line up. A receiver that rejects a chunk (reservation gone) still receives its bytes
into scratch memory, or every later transfer on that pair would be off by one.
"""
from __future__ import annotations

from typing import Any

import torch

from real.page_copy import DTYPES, dtype_name, gather_pages, scatter_pages
from real.protocol import RemoteSend
from real.transport import Sender, Transport, TransportMeta


class NcclMeta(TransportMeta):
    shape: list[int]
    dtype: str
    src_rank: int


def nccl_available() -> bool:
    import torch.distributed as dist

    return torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available()


class NcclTransport(Transport):
    mode = "nccl"
    Meta = NcclMeta
    cuda_only = True
    lands_unconfigured = False

    def __init__(self, local) -> None:
        import torch.distributed as dist

        super().__init__(local)
        spec = local.spec
        if not nccl_available():
            raise RuntimeError("transport 'nccl' needs CUDA and a torch build with NCCL")
        if spec.nccl_init is None or spec.nccl_rank < 0 or spec.nccl_world < 2:
            raise RuntimeError("transport 'nccl' needs a process group: start the engines with RealCluster "
                               "or give nccl_init, nccl_rank and nccl_world")
        device = local.pool.device
        if device.type != "cuda":
            raise RuntimeError(f"transport 'nccl' needs a CUDA engine, this one runs on {device}")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=spec.nccl_init, rank=spec.nccl_rank, world_size=spec.nccl_world)
        self.dist, self.rank, self.device = dist, spec.nccl_rank, device
        self._pending: list[tuple[object, torch.Tensor]] = []  # isends in flight and their buffers

    def sender_for(self, dst: RemoteSend) -> Sender | None:
        return NcclSender(self, dst.dst_rank) if dst.dst_rank >= 0 else None

    def hello_fields(self) -> dict[str, Any]:
        return {"nccl_rank": self.rank}

    def land(self, meta: NcclMeta, frames: list, dst_ids: list[int]) -> int:
        buf = self._recv(meta)
        scatter_pages(self.local.pool, dst_ids, buf)
        return buf.numel() * buf.element_size()

    def drain(self, meta: NcclMeta) -> None:
        if meta.shape:
            self._recv(meta)

    def _recv(self, meta: NcclMeta) -> torch.Tensor:
        if meta.dtype not in DTYPES:
            raise ValueError(f"KV dtype {meta.dtype!r} unknown; known: {', '.join(DTYPES)}")
        buf = torch.empty(meta.shape, dtype=DTYPES[meta.dtype], device=self.device)
        self.dist.recv(buf, src=meta.src_rank)
        return buf

    def post(self, data: torch.Tensor, dst_rank: int) -> None:
        self._pending = [(w, t) for w, t in self._pending if not w.is_completed()]
        self._pending.append((self.dist.isend(data, dst=dst_rank), data))


class NcclSender(Sender):
    mode = "nccl"

    def __init__(self, transport: NcclTransport, dst_rank: int) -> None:
        self.transport, self.dst_rank = transport, dst_rank
        self._next: torch.Tensor | None = None

    def pack(self, src_ids: list[int]) -> tuple[NcclMeta, list]:
        self._next = gather_pages(self.transport.local.pool, src_ids)
        return NcclMeta(shape=list(self._next.shape), dtype=dtype_name(self._next.dtype),
                        src_rank=self.transport.rank), []

    def after_header(self) -> None:
        """Post the send matching the header just sent."""
        data, self._next = self._next, None
        self.transport.post(data, self.dst_rank)


TRANSPORT = NcclTransport
