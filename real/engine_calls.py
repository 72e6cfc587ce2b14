"""What an engine process does for each message on its socket: the router's calls (hello, ping,
prep_recv, remote_send, start_generate, release, cached_prefix_len, stats, peer_down, link_fault,
reset, shutdown) and its peers' KV chunks and acknowledgements. Mixed into real.worker.EngineWorker,
whose loop decodes each message and dispatches it here (its `_handlers`); a handler that raises
ValueError or KeyError is answered with that error, anything else as an internal error.
"""
from __future__ import annotations

import logging
import os
import time

import zmq

from core_api.errors import EngineDown, RequestReleased
from core_api.sequence import SENT
from real import protocol as p
from real.kv_sender import OutgoingSend
from real.streams import Caller, Stream

log = logging.getLogger("real.worker")  # the engine process's one logger, as before the split


class EngineCalls:
    """Mixed into EngineWorker, which holds the scheduler, sender, sockets and answers these use."""

    # -- router calls -------------------------------------------------------------------------
    def _check_owner(self, req_id: str) -> None:
        """Only the client that created a request here may continue, release or abort it."""
        for seq in self.sched.sequences_of(req_id):
            if seq.owner is not None and seq.owner != self._principal:
                log.warning("engine %s: a connection that does not own request %s tried to use it", self.id, req_id)
                raise ValueError(f"request {req_id} belongs to another connection")

    def _request(self, wire: p.WireRequest):
        """The Request, refused here (not in a batch with others) if a token id is out of vocabulary."""
        req = wire.to_request()
        vocab = self.model.config.vocab_size
        if int(req.prompt.max()) >= vocab or int(req.prompt.min()) < 0:
            raise ValueError(f"request {req.id}: token ids must lie in [0, {vocab}) for this model")
        return req

    def _hello(self, ident, msg: p.Hello, frames) -> None:
        c, s = self.model.config, self.spec
        self._reply(ident, msg.id, engine_id=self.id, address=self.address, host=self.host, pid=os.getpid(),
                    now=time.monotonic(), model=s.model_name, model_seed=s.model_seed, dtype=str(self.model.dtype),
                    vocab_size=c.vocab_size, eos_token_id=c.eos_token_id, page_size=s.page_size,
                    num_pages=s.num_pages, max_model_len=self.sched.config.max_model_len, device=s.device,
                    batch_invariant=s.batch_invariant, **self.transports.hello_fields())

    def _ping(self, ident, msg: p.Ping, frames) -> None:
        self._reply(ident, msg.id, now=time.monotonic())

    def _prep_recv(self, ident, msg: p.PrepRecv, frames) -> None:
        now = time.monotonic()
        self._check_owner(msg.req.id)
        seq = self.sched.add_receive(self._request(msg.req), msg.end)
        seq.owner = self._principal
        if self.sched.try_admit_receive(seq, now):
            self._answer_prep(Caller(ident, msg.id), seq)
        else:
            seq.handle = Caller(ident, msg.id)

    def _remote_send(self, ident, msg: p.RemoteSend, frames) -> None:
        req = self._request(msg.req)
        end, kv = req.resolve(msg.end), msg.kv_addr
        if kv.engine_id != msg.dst:
            raise ValueError(f"KVAddr belongs to {kv.engine_id!r}, not to the destination {msg.dst!r}")
        if (msg.begin, end) != (kv.begin, kv.end):
            raise ValueError(f"request {req.id}: range [{msg.begin}, {end}) does not match the receiver's "
                             f"reservation [{kv.begin}, {kv.end})")
        kv.to_kv_addr()  # validates page count and alignment
        if kv.page_size != self.sched.page_size:
            raise ValueError(f"receiver page size {kv.page_size} differs from this engine's {self.sched.page_size}")
        self._check_owner(req.id)
        seq = self.sched.add_send(req, msg.begin, end)
        seq.owner = self._principal
        self.sender.start(seq, OutgoingSend(ident, msg.id, req.id, msg.dst, msg.dst_address, tuple(kv.page_ids),
                                            kv.token, msg.begin, end, self.transports.sender_for(msg)))
        if seq.status == SENT:  # the prefix cache held the whole range: ship it now
            self.sender.ship(seq)

    def _start_generate(self, ident, msg: p.StartGenerate, frames) -> None:
        self._check_owner(msg.req.id)
        seq = self.sched.add_generate(self._request(msg.req), msg.begin)
        seq.owner, seq.handle = self._principal, Stream(ident, msg.id)

    def _release(self, ident, msg: p.Release, frames) -> None:
        self._check_owner(msg.req_id)
        send = self.sender.sends.get(msg.req_id)
        if send is not None and send.in_flight:
            # Its pages may still be read by the receiver (shared memory): free them only after
            # the acknowledgements in flight are in (or the peer timeout), then release the rest.
            self._deferred_release.add(msg.req_id)
            self.sender.fail(send, f"request {msg.req_id} released on engine {self.id}", kind=RequestReleased.kind)
        else:
            for seq in self.sched.release(msg.req_id):
                self._fail(seq, f"request {msg.req_id} released on engine {self.id}", RequestReleased)
        self._reply(ident, msg.id)

    def _cached_prefix_len(self, ident, msg: p.CachedPrefixLen, frames) -> None:
        self._reply(ident, msg.id, tokens=self.sched.cached_prefix_len(self._request(msg.req)))

    def _stats(self, ident, msg: p.Stats, frames) -> None:
        self._reply(ident, msg.id, **self.stats())

    def _peer_down(self, ident, msg: p.PeerDown, frames) -> None:
        self.sender.peer_down(msg.engine_id, msg.address)
        self._reply(ident, msg.id)

    def _link_fault(self, ident, msg: p.LinkFault, frames) -> None:
        self.sender.degrade(msg.dst, time.monotonic() + msg.duration, msg.factor)
        self._reply(ident, msg.id)

    def _reset(self, ident, msg: p.Reset, frames) -> None:
        """Fencing after a false death: work of the earlier incarnation would be zombie work (its
        requests already failed at the router), so all of it ends and its pages are freed."""
        sched = self.sched
        held = {s.id for s in sched.sequences()} | set(self.sender.sends)
        for req_id in held:
            send = self.sender.sends.get(req_id)
            if send is not None:
                self.sender.fail(send, f"engine {self.id} was reset", abandon=True, kind=EngineDown.kind)
            for seq in sched.release(req_id):
                self._fail(seq, f"engine {self.id} was declared dead and reset", EngineDown)
        self.incarnation = msg.incarnation
        log.warning("engine %s reset to incarnation %d: %d requests dropped", self.id, msg.incarnation, len(held))
        self._reply(ident, msg.id, dropped=len(held))

    def _shutdown(self, ident, msg: p.Shutdown, frames) -> None:
        self._reply(ident, msg.id)
        self.running = False

    # -- engine-to-engine ---------------------------------------------------------------------
    def _kv(self, ident, msg: p.KVChunk, frames) -> None:
        self.sock.send_multipart([ident, p.encode(self.kv_in.on_chunk(msg, frames))], flags=zmq.NOBLOCK)

    def _kv_ack(self, ident, msg: p.KVAck, frames) -> None:
        self.sender.on_ack(msg)
