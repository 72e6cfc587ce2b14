"""The Engine protocol: the three microserving sub-request calls, plus a cheap load view.

| call | does | returns |
|---|---|---|
| prep_recv(req, end) | match prompt[:end] against the prefix cache, reserve pages for prompt[matched:end] | (KVAddr, matched_len) |
| remote_send(req, kv_addr, dst, begin, end) | produce KV of prompt[begin:end] (own cache + prefill) and write it into kv_addr on dst | when every page landed |
| start_generate(req, begin) | prefill prompt[begin:] (KV of [0, begin) already here), then decode | async stream of TokenChunk |

Indices are Python style: end=-1 is all but the last prompt token, end=None the whole prompt.
`release(req_id)` ends whatever the engine holds for a request (a reservation that will not be
used, a migrated context, an abandoned stream); full pages already computed stay in the prefix cache.
"""
from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from core_api.types import KVAddr, Request, TokenChunk


@dataclass(slots=True, frozen=True)
class EngineLoad:
    """A snapshot strategies use to pick engines. Cheap: never an RPC round trip on the hot path."""

    engine_id: str
    num_waiting: int
    num_running: int
    num_receiving: int
    queued_prefill_tokens: int
    free_pages: int
    cached_pages: int
    total_pages: int
    page_size: int

    @property
    def usable_pages(self) -> int:
        """Pages that could be handed out now (free, or cached but evictable)."""
        return self.free_pages + self.cached_pages


@runtime_checkable
class Engine(Protocol):
    id: str

    async def prep_recv(self, req: Request, end: int | None = None) -> tuple[KVAddr, int]: ...

    async def remote_send(
        self, req: Request, kv_addr: KVAddr, dst: str, begin: int, end: int | None = None
    ) -> None: ...

    def start_generate(self, req: Request, begin: int = 0) -> AsyncIterator[TokenChunk]: ...

    async def release(self, req_id: str) -> None: ...

    async def cached_prefix_len(self, req: Request) -> int:
        """Tokens of req.prompt this engine's prefix cache holds now (full pages)."""
        ...

    def load(self) -> EngineLoad: ...
