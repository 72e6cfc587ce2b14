"""NCCL KV transport for GPU engines (torch.distributed point-to-point), imported only with CUDA.

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

import torch

from real.protocol import KVChunk
from real.transfer import DTYPES, dtype_name, gather_pages, scatter_pages


def nccl_available() -> bool:
    import torch.distributed as dist

    return torch.cuda.is_available() and dist.is_available() and dist.is_nccl_available()


class NcclTransport:
    def __init__(self, init_method: str | None, rank: int, world: int, device: torch.device) -> None:
        import torch.distributed as dist

        if not nccl_available():
            raise RuntimeError("transport 'nccl' needs CUDA and a torch build with NCCL")
        if init_method is None or rank < 0 or world < 2:
            raise RuntimeError("transport 'nccl' needs a process group: start the engines with RealCluster "
                               "or give nccl_init, nccl_rank and nccl_world")
        device = torch.device(device)
        if device.type != "cuda":
            raise RuntimeError(f"transport 'nccl' needs a CUDA engine, this one runs on {device}")
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", init_method=init_method, rank=rank, world_size=world)
        self.dist, self.rank, self.device = dist, rank, device
        self._pending: list[tuple[object, torch.Tensor]] = []  # isends in flight and their buffers

    def sender_to(self, dst_rank: int) -> NcclSender:
        return NcclSender(self, dst_rank)

    def receive(self, msg: KVChunk, pool: torch.Tensor, dst_ids: list[int]) -> int:
        buf = self._recv(msg)
        scatter_pages(pool, dst_ids, buf)
        return buf.numel() * buf.element_size()

    def drain(self, msg: KVChunk) -> None:
        """Consume the bytes of a rejected chunk so later transfers from that rank stay matched."""
        if msg.shape:
            self._recv(msg)

    def _recv(self, msg: KVChunk) -> torch.Tensor:
        buf = torch.empty(msg.shape, dtype=DTYPES[msg.dtype], device=self.device)
        self.dist.recv(buf, src=msg.src_rank)
        return buf

    def prune(self) -> None:
        self._pending = [(w, t) for w, t in self._pending if not w.is_completed()]


class NcclSender:
    mode = "nccl"

    def __init__(self, transport: NcclTransport, dst_rank: int) -> None:
        self.transport, self.dst_rank = transport, dst_rank
        self._next: torch.Tensor | None = None

    def pack(self, pool: torch.Tensor, src_ids: list[int]) -> tuple[dict, list]:
        self._next = gather_pages(pool, src_ids)
        return {"mode": "nccl", "shape": list(self._next.shape), "dtype": dtype_name(self._next.dtype),
                "src_rank": self.transport.rank}, []

    def after_header(self) -> None:
        """Post the send matching the header just sent."""
        t = self.transport
        t.prune()
        data, self._next = self._next, None
        t._pending.append((t.dist.isend(data, dst=self.dst_rank), data))
