"""The sending side of remote_send: ship KV pages to the receiver engine as prefill produces them.

After every step the scheduler reports which positions a SEND sequence computed; the sender ships
the pages covering [shipped, computed) right away (a page cut by the chunk boundary is shipped
again, whole, with the next chunk), so transfer overlaps the rest of the prefill. The chunk that
completes the range is marked `last`; the receiver answers it with done=True once it has called
complete_receive. remote_send answers the router only when every chunk is acknowledged, and only
then are the sender's pages released (finish_send): a page never has two owners.

Failures never hang: a negative acknowledgement (the reservation expired or was released), a
receiver that stays silent for `peer_timeout_s`, a full send queue or a dead peer (`peer_down`)
fail the transfer, stop its prefill, free its pages and answer the router with the reason.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from core_api.errors import TransferFailed
from core_api.scheduler import Scheduler
from core_api.sequence import Sequence
from real.page_copy import page_bytes
from real.protocol import KVAck, KVChunk, encode
from real.transport import Sender


@dataclass(slots=True)
class OutgoingSend:
    """One remote_send in progress; it is the SEND sequence's `handle`."""

    ident: bytes  # the router connection that asked
    call_id: int
    req_id: str
    dst: str
    dst_address: str
    page_ids: tuple[int, ...]  # receiver pages for [begin, end)
    token: str  # the receiver's capability for them
    begin: int
    end: int
    transport: Sender
    shipped: int = 0
    in_flight: int = 0
    last_sent: bool = False
    landed: bool = False
    error: str | None = None
    error_kind: str = TransferFailed.kind
    chunk_sent: dict[int, tuple[float, int]] = field(default_factory=dict)  # chunk id -> (sent at, bytes)
    last_activity: float = field(default_factory=time.monotonic)
    bytes_sent: int = 0


class KVSender:
    def __init__(self, ctx: zmq.Context, poller: zmq.Poller, sched: Scheduler, engine_id: str, page_size: int,
                 pool, peer_timeout_s: float, answer: Callable[[OutgoingSend], None], keys=None) -> None:
        self.ctx, self.poller, self.sched = ctx, poller, sched
        self.engine_id, self.page_size, self.pool = engine_id, page_size, pool
        self.peer_timeout_s = peer_timeout_s
        self.answer = answer  # replies to the router once a send is over (ok or error)
        self.keys = keys  # CurveKeys: peers are CURVE servers, this engine connects as a client
        self.sends: dict[str, OutgoingSend] = {}
        self.peers: dict[str, zmq.Socket] = {}
        self._xfer = 0
        self.bytes_sent = 0
        self.chunks_sent = 0
        # Link faults (fault injection): dst -> (until, factor or None for a partition), the
        # sends held back by one (req id -> sequence), and per dst when the next chunk may go
        # and the measured bandwidth that a slow-down divides.
        self.link_faults: dict[str, tuple[float, float | None]] = {}
        self.held: dict[str, Sequence] = {}
        self._next_ok: dict[str, float] = {}
        self._bw: dict[str, float] = {}

    # -- outgoing chunks --------------------------------------------------------------------
    def start(self, seq: Sequence, send: OutgoingSend) -> None:
        send.shipped = send.begin
        seq.handle = send
        self.sends[send.req_id] = send

    def ship(self, seq: Sequence) -> None:
        """Send KV of [shipped, num_computed) to the receiver (the whole range once cached)."""
        send: OutgoingSend = seq.handle
        if send.error is not None or send.last_sent:
            return
        if self._gate(send.dst, time.monotonic()) > 0:
            self.held[send.req_id] = seq  # a link fault holds it; retry_held sends it later
            return
        stop = min(seq.num_computed, send.end)
        done = stop >= send.end
        if stop <= send.shipped and not done:
            return
        ps = self.page_size
        first, last = (send.shipped - send.begin) // ps, -(-(stop - send.begin) // ps)
        base = send.begin // ps
        src = seq.pages[base + first: base + last]
        meta, frames = send.transport.pack(src)
        self._xfer += 1
        msg = KVChunk(op="kv", id=self._xfer, req_id=send.req_id, token_begin=send.shipped, token_end=stop,
                      page_ids=list(send.page_ids[first:last]), last=done, token=send.token,
                      mode=send.transport.mode, meta=meta.model_dump())
        try:
            self._peer(send.dst_address).send_multipart([encode(msg), *frames], copy=False, flags=zmq.NOBLOCK)
        except zmq.ZMQError as exc:
            self.fail(send, f"cannot send KV to {send.dst} at {send.dst_address}: {exc}")
            return
        send.transport.after_header()  # NCCL: the data goes as a send matching the header
        nbytes = len(src) * page_bytes(self.pool)
        send.chunk_sent[self._xfer] = (time.monotonic(), nbytes)
        fault = self.link_faults.get(send.dst)
        if fault is not None and fault[1] is not None and send.dst in self._bw:
            # A slow link: the next chunk waits as long as this one would take (factor - 1) more.
            self._next_ok[send.dst] = time.monotonic() + (fault[1] - 1) * nbytes / self._bw[send.dst]
        send.bytes_sent += nbytes
        self.bytes_sent += nbytes
        self.chunks_sent += 1
        send.in_flight += 1
        send.shipped, send.last_sent = stop, done
        send.last_activity = time.monotonic()

    def _peer(self, address: str) -> zmq.Socket:
        sock = self.peers.get(address)
        if sock is None:
            sock = self.ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, 100_000)
            if self.keys is not None:
                self.keys.client(sock)
            sock.connect(address)
            self.poller.register(sock, zmq.POLLIN)
            self.peers[address] = sock
        return sock

    # -- acknowledgements -------------------------------------------------------------------
    def on_ack(self, ack: KVAck) -> None:
        send = self.sends.get(ack.req_id)
        if send is None:  # a late answer to a transfer that already failed
            return
        sent = send.chunk_sent.pop(ack.id, None)
        if sent is not None and time.monotonic() > sent[0]:
            self._bw[send.dst] = sent[1] / (time.monotonic() - sent[0])  # bytes per second, last chunk
        send.in_flight = max(0, send.in_flight - 1)
        send.last_activity = time.monotonic()
        if not ack.ok:
            send.error = send.error or f"receiver {send.dst}: {ack.error}"
        if ack.done:
            send.landed = True
        self._maybe_done(send)

    def fail(self, send: OutgoingSend, reason: str, abandon: bool = False, kind: str = TransferFailed.kind) -> None:
        """Stop the transfer; with `abandon`, stop waiting for acknowledgements in flight too.
        `kind` names the error class the router raises (core_api.errors); the first failure wins."""
        if send.error is None:
            send.error_kind = kind
        send.error = send.error or reason
        if abandon:
            send.in_flight = 0
        self._maybe_done(send)

    def _maybe_done(self, send: OutgoingSend) -> None:
        if send.in_flight or not (send.last_sent or send.error):
            return
        if send.error is None and not send.landed:
            send.error = f"receiver {send.dst} never confirmed the reservation complete"
        self.sends.pop(send.req_id, None)
        self.sched.finish_send(send.req_id)  # releases the sender's pages (computed ones stay cached)
        self.answer(send)

    def check_timeouts(self, now: float) -> None:
        for send in list(self.sends.values()):
            if send.in_flight and now - send.last_activity > self.peer_timeout_s:
                self.fail(send, f"receiver {send.dst} at {send.dst_address} did not acknowledge KV pages "
                                f"within {self.peer_timeout_s:g} s", abandon=True)

    # -- link faults (fault injection) --------------------------------------------------------
    def degrade(self, dst: str, until: float, factor: float | None) -> None:
        self.link_faults[dst] = (until, factor)

    def _gate(self, dst: str, now: float) -> float:
        """Seconds until a chunk to `dst` may go (0: now)."""
        fault = self.link_faults.get(dst)
        if fault is None:
            return 0.0
        until, factor = fault
        if now >= until:
            del self.link_faults[dst]
            self._next_ok.pop(dst, None)
            return 0.0
        if factor is None:
            return until - now
        return max(0.0, self._next_ok.get(dst, 0.0) - now)

    def retry_held(self, now: float) -> int:
        """Ship held sends whose link lets them go; returns ms until the next one may (for the poll)."""
        wait = float("inf")
        for req_id, seq in list(self.held.items()):
            gate = self._gate(seq.handle.dst, now)
            if gate > 0:
                wait = min(wait, gate)
                continue
            del self.held[req_id]
            if seq.handle is not None and req_id in self.sends:
                self.ship(seq)
        return 0 if wait == float("inf") else max(1, int(wait * 1000))

    def peer_down(self, engine_id: str, address: str) -> None:
        for send in list(self.sends.values()):
            if send.dst == engine_id or (address and send.dst_address == address):
                self.fail(send, f"receiver {send.dst} is down", abandon=True)
        sock = self.peers.pop(address, None)
        if sock is not None:
            self.poller.unregister(sock)
            sock.close(0)

    def close(self) -> None:
        for sock in self.peers.values():
            sock.close(0)
        self.peers.clear()
