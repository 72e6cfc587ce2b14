"""What a KV transport is; the package real.transports holds one module per transport and finds them.

A transfer is always: the sender names pages of its pool and the receiver's pages for the same
tokens (page j of the reservation holds tokens [begin + j*ps, begin + (j+1)*ps), same alignment
on both sides), and the receiver writes them into its pool and acknowledges. Transports differ
only in where the bytes travel, so one class per transport pairs its two halves:

- sender: `sender_for(dst)` says whether it can reach a receiver (the same host, a shared process
  group, ...); the object it returns `pack`s pages into a chunk header (`Meta`, this transport's
  own fields) and the frames that follow it, and may act once the header went (`after_header`).
- receiver: `land` writes the pages a chunk describes into the pool; `drain` consumes a refused
  chunk's bytes where the transport needs that to stay in step.

Each transport is one module `real/transports/<mode>.py` defining `TRANSPORT` (the registry is
that package: `real.transports.transport_class`), so a new transport is one file.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from real.protocol import RemoteSend
from real.shared_pool import SharedPool, shm_usable
from real.transports import AUTO


class TransportMeta(BaseModel):
    """A transport's own fields of a KV chunk header (`KVChunk.meta`), validated on arrival."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class LocalKV:
    """What a transport sees of its engine."""

    pool: torch.Tensor
    host: str  # real.pool_files.host_key()
    spec: Any  # the engine's EngineSpec (NCCL group settings)
    shared: SharedPool | None = None  # the pool's /dev/shm file when it has one


class Sender(ABC):
    """One transport's way to a receiver."""

    mode: ClassVar[str]

    @abstractmethod
    def pack(self, src_ids: list[int]) -> tuple[TransportMeta, list]:
        """The header fields and the frames that carry pages `src_ids` of the local pool."""

    def after_header(self) -> None:
        """Called once the chunk's header has gone out."""


class Transport(ABC):
    """Both halves of one way of moving pages; a transport that reaches every receiver the same
    way is its own Sender too."""

    mode: ClassVar[str]
    Meta: ClassVar[type[TransportMeta]]
    cuda_only: ClassVar[bool] = False
    # Whether an engine configured for another transport may still land chunks of this one
    # (creating it on the first such chunk); NCCL needs a process group set up at start.
    lands_unconfigured: ClassVar[bool] = True

    def __init__(self, local: LocalKV) -> None:
        self.local = local

    @classmethod
    def make_pool(cls, shape: tuple[int, ...], dtype: torch.dtype, device: str) -> SharedPool | None:
        """A pool this transport needs its engine to allocate (None: an ordinary tensor)."""
        return None

    def sender_for(self, dst: RemoteSend) -> Sender | None:
        """How to reach the receiver of `dst`, or None if this transport cannot."""
        return self

    def hello_fields(self) -> dict[str, Any]:
        """What peers and the router need to know of this engine's transport (its hello answer)."""
        return {}

    @abstractmethod
    def land(self, meta: TransportMeta, frames: list, dst_ids: list[int]) -> int:
        """Write the chunk's pages into the local pool's `dst_ids`; returns the bytes landed.
        ValueError when the chunk does not fit this pool."""

    def drain(self, meta: TransportMeta) -> None:
        """A chunk was refused before landing: consume what it would have delivered, if anything."""


def resolve_mode(mode: str, device: str) -> str:
    """`auto`: shared memory between CPU engines of a host when /dev/shm exists, else zmq frames."""
    if mode != AUTO:
        return mode
    return "shm" if shm_usable(device) else "zmq"
