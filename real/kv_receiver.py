"""The receiving side of remote_send: land KV chunks in reserved pages, complete the reservation.

A chunk is accepted only while its reservation is open (prep_recv admitted it and it has neither
expired nor been released): the check, the page write and the completion all happen here, in the
engine's own loop, so a page that went back to the free list can never be written by a late
transfer. The receiver maps the chunk's token range onto its own page table and refuses page ids
that disagree with it, and refuses (and logs) any chunk without the reservation's capability: the
unguessable token it issued with the KVAddr, which only the router that asked and the sender it
told hold. Each chunk pushes the reservation's deadline out (touch_receive); the
chunk marked `last` completes it (complete_receive), after which its pages hold KV of
[0, end) and wait for start_generate or release. Every chunk is answered with a KVAck.
"""
from __future__ import annotations

import hmac
import logging
import secrets
import time

from core_api.scheduler import Scheduler
from core_api.sequence import RECEIVE
from real.engine_transports import EngineTransports
from real.protocol import KVAck, KVChunk

log = logging.getLogger(__name__)


def issue_token() -> str:
    """A reservation's capability: 128 random bits, so no peer can guess one it was not given."""
    return secrets.token_urlsafe(16)


class KVReceiver:
    def __init__(self, sched: Scheduler, engine_id: str, transports: EngineTransports) -> None:
        self.sched, self.engine_id, self.transports = sched, engine_id, transports

    def on_chunk(self, msg: KVChunk, frames: list) -> KVAck:
        ack = KVAck(op="kv_ack", id=msg.id, req_id=msg.req_id, ok=True)
        try:
            page_ids = self.check(msg)
        except ValueError as exc:
            self.transports.drain(msg)  # e.g. keep an NCCL pair matched
            ack.ok, ack.error = False, str(exc)
            return ack
        try:
            self.transports.land(msg, frames, page_ids)
            if msg.last:
                self.sched.complete_receive(msg.req_id, time.monotonic())
                ack.done = True
        except (ValueError, KeyError, RuntimeError) as exc:  # RuntimeError: torch refused the copy
            ack.ok, ack.error = False, str(exc.args[0] if isinstance(exc, KeyError) and exc.args else exc)
        return ack

    def check(self, msg: KVChunk) -> list[int]:
        """The reservation's pages for the chunk's tokens; ValueError if it is gone or they differ."""
        sched = self.sched
        closed = f"no open reservation for request {msg.req_id} on engine {self.engine_id} (expired or released)"
        seq = sched.receiving.get(msg.req_id)
        if seq is None or seq.kind != RECEIVE:
            raise ValueError(closed)
        # Before touch_receive: a chunk without the capability must not even keep the reservation alive.
        if not (seq.kv_token and hmac.compare_digest(msg.token.encode(), seq.kv_token.encode())):
            log.warning("engine %s: refused KV for request %s: wrong capability", self.engine_id, msg.req_id)
            raise ValueError(f"KV for request {msg.req_id} refused: not the capability this engine issued "
                             "for the reservation")
        if not sched.touch_receive(msg.req_id, time.monotonic()):
            raise ValueError(closed)
        ps = sched.page_size
        if not seq.begin <= msg.token_begin <= msg.token_end <= seq.target:
            raise ValueError(f"tokens [{msg.token_begin}, {msg.token_end}) outside the reservation "
                             f"[{seq.begin}, {seq.target})")
        pages = seq.pages[msg.token_begin // ps: -(-msg.token_end // ps)] if msg.token_end > msg.token_begin else []
        if list(msg.page_ids) != pages:
            raise ValueError(f"page ids {msg.page_ids[:8]} do not match the reservation's pages {pages[:8]} "
                             f"for tokens [{msg.token_begin}, {msg.token_end})")
        return pages
