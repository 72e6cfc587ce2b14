"""A KV pool tensor backed by a file in /dev/shm that other engines on this host can map."""
from __future__ import annotations

import mmap
import os
import secrets
import stat

import torch

from real.pool_files import POOL_PATH, SHM_DIR, SHM_PREFIX, unlink_pool


class SharedPool:
    """The file is created exclusively, mode 0600, under an unpredictable name; it is opened without
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
        if not POOL_PATH.fullmatch(path):
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


def shm_usable(device: torch.device | str) -> bool:
    return torch.device(device).type == "cpu" and os.path.isdir(SHM_DIR)
