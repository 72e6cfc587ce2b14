"""The Engine protocol: the three microserving sub-request calls, plus a cheap load view.

| call | does | returns |
|---|---|---|
| prep_recv(req, end) | match prompt[:end] against the prefix cache, reserve pages for prompt[matched:end] | (KVAddr, matched_len) |
| remote_send(req, kv_addr, dst, begin, end) | produce KV of prompt[begin:end] (own cache + prefill) and write it into kv_addr on dst | when every page landed |
| start_generate(req, begin) | prefill prompt[begin:] (KV of [0, begin) already here), then decode | async stream of TokenChunk |

Indices are Python style: end=-1 is all but the last prompt token, end=None the whole prompt.
`release(req_id)` ends whatever the engine holds for a request (a reservation that will not be
used, a migrated context, an abandoned stream); full pages already computed stay in the prefix cache.

Reservations, precisely (one scheduler implements this for both backends):
- What a reservation pins: from admission, pages for prompt[matched:end] and one of the engine's
  `max_num_seqs` slots, until start_generate turns it into a running sequence, release ends it,
  or it expires (`reservation_timeout_s` after admission, pushed out by every chunk that lands,
  and again after the last one). An expired or released reservation fails the send that fills it.
- Backpressure: reservations together hold at most `reservation_share` (default half) of the
  pages and of the slots. A prep_recv beyond that, or for which pages are not free, waits until
  it fits (its caller is answered then); it never blocks the engine's other work.
- What a receiver may do with received KV: once the last page lands, the full pages join its
  prefix cache. start_generate(begin <= end) generates on them; remote_send from that engine may
  reuse them as a cached prefix (a relay); a strategy that will not generate there should release
  the reservation, and the pages stay cached (evictable) rather than pinned.
- Why no strategy can deadlock engines: a reservation is completed by another engine's send; a
  send takes pages only from the share reservations cannot take, gets all of them when admitted
  (so it never stalls half-computed) and finishes; generating sequences finish or are preempted.
  Work that could never fit its share (a prep_recv larger than the reservation share, a send
  larger than the rest) is refused at once with RequestRejected.
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

    @property
    def busy(self) -> int:
        """Sequences the engine is working on or waiting for: the load measure of the decode side."""
        return self.num_running + self.num_waiting + self.num_receiving

    @classmethod
    def down(cls, engine_id: str, total_pages: int, page_size: int) -> EngineLoad:
        """What a dead engine reports on both backends: infinitely busy and full, so load-aware
        strategies route around it (round robin does not look, and gets fast failures)."""
        return cls(engine_id, DOWN_LOAD, 0, 0, DOWN_LOAD, 0, 0, total_pages, page_size)


DOWN_LOAD = 1 << 40


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

    @property
    def healthy(self) -> bool:
        """The engine accepts calls (not crashed, not declared dead by the router)."""
        ...
