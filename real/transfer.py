"""KV page transports: how pages computed on one engine land in another engine's pool.

A transfer is always: the sender names pages of its pool and the receiver's pages for the same
tokens (page j of the reservation holds tokens [begin + j*ps, begin + (j+1)*ps), same alignment
on both sides), and the receiver writes them into its pool and acknowledges. Transports differ
only in where the bytes travel:

- `ZmqTransport` (default, works across hosts): the sender gathers `pool[:, ids]` into one
  contiguous buffer and sends it as a raw zmq frame after the msgpack header; the receiver
  scatters it into its pages. GPU pools are staged through pinned host memory.
- `ShmTransport` (same host, CPU pools): every engine's pool lives in a file under /dev/shm, so
  the header only names the sender's segment and page ids; the receiver copies straight from the
  sender's pool into its own (one memcpy, no socket). The receiver does the copy, in its own
  loop, after checking that the reservation is still open, so an expired reservation can never
  be overwritten, and the sender keeps its pages until the acknowledgement.
- NCCL (GPU engines, torch.distributed) is in `real.nccl_transfer`, imported only with CUDA.
- CUDA IPC (GPU engines of one host, device to device) is in `real.cuda_ipc`, likewise.

`PageReceiver` lands a `KVChunk` of any mode into the receiver's pool.
"""
from __future__ import annotations

import mmap
import os
import re
import secrets
import socket
import stat
import time

import torch

from real.protocol import KVChunk

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
SHM_DIR = "/dev/shm"
SHM_PREFIX = "microserving-kv-"
# 128 random bits: no other user can predict a pool's name, so none can pre-create it (or a
# symlink under it) before the engine does.
_POOL_PATH = re.compile(re.escape(f"{SHM_DIR}/{SHM_PREFIX}") + r"[0-9a-f]{32}")


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# -- page copies ------------------------------------------------------------------------
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
    a single pass over the bytes (fancy indexing would gather into a temporary first)."""
    if len(dst_ids) != len(src_ids):
        raise ValueError(f"{len(dst_ids)} destination pages for {len(src_ids)} source pages")
    for d, s, n in runs(dst_ids, src_ids):
        dst[:, d:d + n].copy_(src[:, s:s + n])


# -- shared-memory pools ----------------------------------------------------------------
class SharedPool:
    """A KV pool tensor backed by a file in /dev/shm that other processes on this host can map.

    The file is created exclusively, mode 0600, under an unpredictable name; it is opened without
    following symlinks, and a pool is attached only if it is a regular file of this user with no
    access for anyone else and exactly the expected size: a symlink or a file planted under a pool's
    name can never make an engine read or write another file. The creating engine unlinks the
    file when it exits (also when its launcher died, see EngineSpec.exit_with_parent); RealCluster
    also unlinks the files of engines it launched, so a killed engine leaves nothing behind.
    """

    def __init__(self, path: str, shape: tuple[int, ...], dtype: torch.dtype, create: bool) -> None:
        self.path, self.shape, self.dtype, self.owner = path, tuple(shape), dtype, create
        nbytes = max(1, torch.Size(shape).numel() * torch.empty((), dtype=dtype).element_size())
        flags = os.O_RDWR | os.O_NOFOLLOW | (os.O_CREAT | os.O_EXCL if create else 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            raise ValueError(f"cannot open shared pool {path}: {exc.strerror}") from None
        try:
            if create:
                os.ftruncate(fd, nbytes)  # a fresh tmpfs file reads as zeros
            else:
                _check_pool_file(path, os.fstat(fd), nbytes)
            # MAP_POPULATE: map the (already allocated) pages now, not one fault per 4 KiB in the
            # first transfer that reads them.
            self._map = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0))
        finally:
            os.close(fd)
        self.tensor = torch.frombuffer(self._map, dtype=dtype, count=torch.Size(shape).numel()).view(shape)

    @classmethod
    def create(cls, shape: tuple[int, ...], dtype: torch.dtype) -> SharedPool:
        return cls(f"{SHM_DIR}/{SHM_PREFIX}{secrets.token_hex(16)}", shape, dtype, True)

    @classmethod
    def attach(cls, path: str, shape: tuple[int, ...], dtype: torch.dtype) -> SharedPool:
        if not _POOL_PATH.fullmatch(path):
            raise ValueError(f"refusing to map {path!r}: not a microserving KV pool")
        return cls(path, shape, dtype, False)

    def unlink(self) -> None:
        if self.owner:
            unlink_pool(self.path)


def _check_pool_file(path: str, st: os.stat_result, nbytes: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"refusing to map {path}: not a regular file")
    if st.st_uid != os.getuid():
        raise ValueError(f"refusing to map {path}: owned by uid {st.st_uid}, not by this engine's user")
    if st.st_mode & 0o077:
        raise ValueError(f"refusing to map {path}: mode {stat.S_IMODE(st.st_mode):o} lets other users in")
    if st.st_size != nbytes:
        raise ValueError(f"refusing to map {path}: it holds {st.st_size} bytes, a pool of this shape {nbytes}")


def unlink_pool(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def host_key() -> str:
    """Identifies this host (and boot), so engines know when shared memory can reach a peer."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "?"
    return f"{socket.gethostname()}/{boot}"


def shm_usable(device: torch.device | str) -> bool:
    return torch.device(device).type == "cpu" and os.path.isdir(SHM_DIR)


# -- transports (sender side) -------------------------------------------------------------
class ZmqTransport:
    """Pages as one raw frame after the header; GPU pages staged through pinned host memory."""

    mode = "zmq"

    def pack(self, pool: torch.Tensor, src_ids: list[int]) -> tuple[dict, list]:
        data = gather_pages(pool, src_ids)
        if data.device.type != "cpu":
            staged = torch.empty(data.shape, dtype=data.dtype, pin_memory=True)
            staged.copy_(data, non_blocking=True)
            torch.cuda.current_stream(data.device).synchronize()
            data = staged
        header = {"mode": "zmq", "shape": list(data.shape), "dtype": dtype_name(data.dtype)}
        return header, [memoryview(data.view(torch.uint8).reshape(-1).numpy())]


class ShmTransport:
    """Only names: the receiver copies from this engine's shared pool itself."""

    mode = "shm"

    def __init__(self, pool: SharedPool) -> None:
        self.pool = pool

    def pack(self, pool: torch.Tensor, src_ids: list[int]) -> tuple[dict, list]:
        return {"mode": "shm", "shm_name": self.pool.path, "src_pages": list(src_ids),
                "pool_shape": list(self.pool.shape), "dtype": dtype_name(self.pool.dtype)}, []


# -- receiver side ----------------------------------------------------------------------
class PageReceiver:
    """Writes the pages of a KVChunk into this engine's pool, whatever the mode."""

    def __init__(self, pool: torch.Tensor, nccl=None, own_path: str | None = None) -> None:
        self.pool = pool
        self.nccl = nccl
        self.own_path = own_path  # this engine's own shared pool: never a source of incoming KV
        self._peers: dict[str, SharedPool] = {}
        self.ipc = None  # CUDA IPC peers, opened on the first cuda_ipc chunk
        self.bytes_received = 0
        self.land_s = 0.0  # time spent writing received pages into the pool

    def land(self, msg: KVChunk, frames: list, dst_ids: list[int]) -> None:
        if not dst_ids:
            return
        t0 = time.perf_counter()
        try:
            self._land(msg, frames, dst_ids)
        finally:
            self.land_s += time.perf_counter() - t0

    def _land(self, msg: KVChunk, frames: list, dst_ids: list[int]) -> None:
        pool = self.pool
        if msg.mode == "zmq":
            data = self._frame_tensor(msg, frames, len(dst_ids))
            scatter_pages(pool, dst_ids, data)
            self.bytes_received += data.numel() * data.element_size()
        elif msg.mode == "cuda_ipc":
            if self.ipc is None:
                from real.cuda_ipc import CudaIpcPeers

                self.ipc = CudaIpcPeers()
            if msg.ipc is None:
                raise ValueError("a cuda_ipc chunk without its pool descriptor")
            self.bytes_received += self.ipc.land(pool, msg.ipc, msg.src_pages, dst_ids)
        elif msg.mode == "shm":
            src = self._attach(msg).tensor
            if len(msg.src_pages) != len(dst_ids) or not 0 <= min(msg.src_pages) <= max(msg.src_pages) < src.shape[1]:
                raise ValueError(f"source pages {msg.src_pages[:8]} do not fit {len(dst_ids)} destination pages "
                                 f"and a pool of {src.shape[1]}")
            copy_pages(pool, dst_ids, src, msg.src_pages)
            self.bytes_received += len(dst_ids) * pool[:, 0].numel() * pool.element_size()
        elif self.nccl is not None:
            self.bytes_received += self.nccl.receive(msg, pool, dst_ids)
        else:
            raise ValueError("an NCCL chunk arrived but this engine has no NCCL process group")

    def _frame_tensor(self, msg: KVChunk, frames: list, n: int) -> torch.Tensor:
        pool = self.pool
        want = [pool.shape[0], n, *pool.shape[2:]]
        if msg.shape != want or msg.dtype not in DTYPES or len(frames) != 1:
            raise ValueError(f"KV chunk of shape {msg.shape} {msg.dtype} in {len(frames)} frames; "
                             f"this pool wants {want} {dtype_name(pool.dtype)} in 1 frame")
        buf = frames[0].buffer if hasattr(frames[0], "buffer") else frames[0]
        data = torch.frombuffer(buf, dtype=DTYPES[msg.dtype])
        if data.numel() != torch.Size(want).numel():
            raise ValueError(f"KV frame holds {data.numel()} values, header says {want}")
        return data.view(want)

    def _attach(self, msg: KVChunk) -> SharedPool:
        if msg.shm_name == self.own_path:  # copying from ourselves would hand one request's KV to another
            raise ValueError("refusing a KV chunk that names this engine's own pool as its source")
        peer = self._peers.get(msg.shm_name)
        if peer is None or list(peer.shape) != msg.pool_shape:
            peer = SharedPool.attach(msg.shm_name, tuple(msg.pool_shape), DTYPES[msg.dtype])
            self._peers[msg.shm_name] = peer
        return peer

    def forget(self, path: str) -> None:
        """Drop the mapping of a dead peer's pool."""
        self._peers.pop(path, None)
