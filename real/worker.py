"""EngineWorker: one engine process. A zmq ROUTER socket, the shared core_api Scheduler, the model
runner and one KV pool tensor [layers, pages, 2, page_size, kv_heads, head_dim].

The loop mirrors sim.engine.SimEngine with a real clock: drain the sockets, expire reservations,
then schedule -> execute -> update. While there is work the poll does not wait, so I/O never
stalls a step; when idle the loop blocks in poll until a message arrives (waking every 100 ms for expiries).

Router calls (prep_recv, remote_send, start_generate, release, cached_prefix_len, stats, ping,
hello, peer_down, shutdown) arrive on the ROUTER socket; so do KV chunks from peer engines, which
land in this pool and are acknowledged on the same connection. Their handlers are
real.engine_calls. A prep_recv or start_generate
that must wait (for pages, for compute) keeps the caller's identity on its sequence (`handle`)
and is answered when the step loop gets there. Every failure is an error answer with a reason:
a call never goes unanswered, and an exception in one handler never stops the engine.
"""
from __future__ import annotations

import logging
import os
import time

import torch
import zmq

from core_api.errors import (
    EngineCallError,
    RequestFailed,
    RequestRejected,
    RequestReleased,
    ReservationExpired,
)
from core_api.scheduler import Scheduler
from core_api.sequence import FAILED, Sequence
from real import protocol as p
from real.config import EngineSpec
from real.engine_calls import EngineCalls
from real.engine_stats import MALFORMED, CallCosts, IdleSpells, add_features, engine_stats, feature_totals
from real.engine_transports import EngineTransports
from real.keys import ENGINE, load_keys, start_authenticator
from real.kv_receiver import KVReceiver, issue_token
from real.kv_sender import KVSender, OutgoingSend
from real.loading import load_model
from real.pool_files import host_key
from real.runner import ModelRunner
from real.streams import Caller, StreamOut
from real.transport import LocalKV, resolve_mode
from real.transports import transport_class

log = logging.getLogger(__name__)
IDLE_POLL_MS = 100


class EngineWorker(EngineCalls):
    def __init__(self, spec: EngineSpec, ctx: zmq.Context | None = None) -> None:
        torch.set_num_threads(spec.threads)
        self.spec, self.id = spec, spec.id
        self.model = load_model(spec.model_name, spec.device, spec.model_seed, spec.dtype, spec.batch_invariant)
        c = self.model.config
        shape = (c.num_layers, spec.num_pages, 2, spec.page_size, c.num_kv_heads, c.head_dim)
        self.transport_mode = resolve_mode(spec.transport, spec.device)
        # Some transports need the pool where peers can reach it (shm: a /dev/shm file).
        self.shared = transport_class(self.transport_mode).make_pool(shape, self.model.dtype, spec.device)
        if self.shared is not None:
            self.pool = self.shared.tensor
        else:
            self.pool = self.model.allocate_kv_pool(spec.num_pages, spec.page_size)
        try:
            self._setup(spec, ctx)
        except BaseException:
            self.close_pool()  # e.g. the listen address is taken: leave no pool file behind
            raise

    def _setup(self, spec: EngineSpec, ctx: zmq.Context | None) -> None:
        c = self.model.config
        # Touch every page of the pool now (a GPU allocator would hand out resident memory too):
        # otherwise the first transfers and prefills into fresh pages pay one page fault per 4 KiB.
        self.pool.zero_()
        self.sched = Scheduler(spec.scheduler_config(
            spec.num_pages, c.eos_token_id, max_model_len=min(spec.max_model_len, c.max_position_embeddings)))
        self.runner = ModelRunner(self.model, self.pool, spec.page_size)
        self.runner.warmup()
        self.host = host_key()
        self.transports = EngineTransports(LocalKV(self.pool, self.host, spec, self.shared), self.transport_mode)
        self.kv_in = KVReceiver(self.sched, self.id, self.transports)
        # A context of its own unless given one: its ZAP handler then serves this engine alone.
        self._own_ctx = ctx is None
        self.ctx = ctx or zmq.Context()
        self.keys = load_keys(spec.keys, ENGINE) if spec.keys else None
        self.authenticator = start_authenticator(self.ctx, self.keys) if self.keys else None
        self.sock = self.ctx.socket(zmq.ROUTER)
        if self.keys:
            self.keys.server(self.sock)  # CURVE: only clients with a key in spec.keys get through
        self.sock.setsockopt(zmq.LINGER, 0)
        # No high-water marks: a ROUTER silently drops what exceeds one, and a dropped chunk
        # would leave a stream waiting forever. Memory is the limit instead.
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.bind(spec.listen.replace(":0", ":*") if spec.listen.endswith(":0") else spec.listen)
        self.address = self.sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.sender = KVSender(self.ctx, self.poller, self.sched, self.id, spec.page_size, self.pool,
                               spec.peer_timeout_s, self._send_over, self.keys)
        self.steps, self.busy_s = 0, 0.0
        self.incarnation = 0
        # What calibration compares with a profile's prediction: the whole loop iteration of every
        # step (poll, schedule, forward, update, stream), as the profiler times it, and the summed
        # features of those steps (a fitted step model is linear in them), and how many steps
        # computed each number of tokens (a profile's token curve prices those).
        self.loop_s = 0.0
        self.feature_totals = feature_totals()
        self.steps_by_tokens: dict[int, int] = {}
        self.idle_spells = IdleSpells()
        self.calls = CallCosts()
        self.running = True
        self._deferred_release: set[str] = set()
        # Who sent the message being handled: the client's CURVE public key when authenticated
        # (so a router that reconnects with its keys still owns its requests), else its connection.
        self._principal: object = None
        self.stream_out = StreamOut(spec.stream_interval_s, self._send)
        self._ppid = os.getppid()
        self._handlers = {
            "hello": self._hello, "ping": self._ping, "prep_recv": self._prep_recv, "remote_send": self._remote_send,
            "start_generate": self._start_generate, "release": self._release, "stats": self._stats,
            "cached_prefix_len": self._cached_prefix_len, "peer_down": self._peer_down, "shutdown": self._shutdown,
            "reset": self._reset, "link_fault": self._link_fault,
            "kv": self._kv, "kv_ack": self._kv_ack,
        }

    # -- the loop -----------------------------------------------------------------------------
    def serve(self) -> None:
        timeout = 0
        while self.running:
            t0 = time.perf_counter()
            self._poll(timeout)
            if not self.running:
                break
            if timeout:  # the poll waited for a message: the iteration starts when it came
                t0 = time.perf_counter()
            ran = self.step()
            if ran:
                self.loop_s += time.perf_counter() - t0
                self.idle_spells.ran(t0)
            timeout = IDLE_POLL_MS if not ran else 0
            if self.sender.held:  # chunks held by a link fault go out when it ends
                wait = self.sender.retry_held(time.monotonic())
                timeout = min(timeout, wait) if timeout else timeout
            if timeout and self.stream_out.pending:
                self.stream_out.flush()  # idle: nothing will come to send them with
            if not ran:
                self.idle_spells.idle(time.perf_counter())
            if self.spec.exit_with_parent and os.getppid() != self._ppid:
                log.warning("engine %s: launcher exited, shutting down", self.id)
                break

    def step(self) -> bool:
        """Expire, schedule, execute, update. True if a batch ran."""
        sched = self.sched
        now = time.monotonic()
        if sched.receiving:
            for seq in sched.expire(now):
                self._fail(seq, f"reservation for request {seq.id} on engine {self.id} expired", ReservationExpired)
        self.sender.check_timeouts(now)
        out = sched.schedule(now)
        for seq in out.admitted_receives:
            if isinstance(seq.handle, Caller):
                self._answer_prep(seq.handle, seq)
                seq.handle = None
        for seq in out.failed:
            self._fail(seq, f"request {seq.id} failed on engine {self.id}: {seq.finish_reason}", RequestRejected)
        batch = out.batch
        if not batch:
            return False
        t0 = time.perf_counter()
        step = self.runner.execute(batch)  # never raises: what fails, fails per sequence
        self.busy_s += time.perf_counter() - t0
        self.steps += 1
        add_features(self.feature_totals, self.steps_by_tokens, batch.features)
        for seq, reason in step.failed:  # released before update, which then skips them
            log.warning("engine %s: request %s failed: %s", self.id, seq.id, reason)
            for dropped in sched.release(seq.id, FAILED):
                self._fail(dropped, f"request {seq.id} failed on engine {self.id}: {reason}", RequestFailed)
        result = sched.update(batch, step.tokens, time.monotonic())
        if result.sampled:
            self.stream_out.add(result.sampled, result.finished)
        for seq, _start, _stop in result.sends:
            self.sender.ship(seq)
        return True

    def _poll(self, timeout_ms: int) -> None:
        events = dict(self.poller.poll(timeout_ms))
        while events:
            for sock in events:
                self._drain(sock)
            events = dict(self.poller.poll(0)) if self.running else {}

    def _drain(self, sock: zmq.Socket) -> None:
        router = sock is self.sock
        while self.running:
            try:
                frames = sock.recv_multipart(flags=zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            ident = frames[0].bytes if router else b""
            body = frames[1:] if router else frames
            self._dispatch(ident, body)

    def _dispatch(self, ident: bytes, frames: list) -> None:
        """Handle one message, its thread CPU counted under its op (calibration reads what a
        start_generate costs the loop outside any step)."""
        t0 = time.thread_time()
        op = self._handle(ident, frames)
        self.calls.add(op, time.thread_time() - t0)

    def _handle(self, ident: bytes, frames: list) -> str:
        """Decode and run one message; its op (or "malformed")."""
        if not frames:
            self._send(ident, p.Error(op="error", error="malformed message: no frames", kind="ProtocolError"))
            return MALFORMED
        try:
            msg = p.decode_engine_msg(frames[0].bytes)
        except p.ProtocolError as exc:
            self._send(ident, p.Error(op="error", id=exc.call_id, error=str(exc), kind="ProtocolError"))
            return MALFORMED
        self._principal = _user_id(frames[0]) or ident
        try:
            self._handlers[msg.op](ident, msg, frames[1:])
        except (ValueError, KeyError) as exc:  # RequestRejected is a ValueError
            kind = RequestRejected.kind if isinstance(exc, RequestRejected) else type(exc).__name__
            text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
            self._send(ident, p.Error(op="error", id=msg.id, error=f"{msg.op} on engine {self.id}: {text}", kind=kind))
        except Exception as exc:  # a bug in one call must not take the engine down
            log.exception("engine %s: %s failed", self.id, msg.op)
            self._send(ident, p.Error(op="error", id=msg.id, error=f"{msg.op} on engine {self.id}: internal error "
                                      f"{type(exc).__name__}: {exc}", kind="InternalError"))
        return msg.op

    # -- answers ------------------------------------------------------------------------------
    def _send(self, ident: bytes, msg) -> None:
        if ident == b"":
            return  # came from a peer DEALER socket: nothing to answer there
        if hasattr(msg, "load"):
            msg.load = p.load_to_wire(self.sched.load(self.id))
        self.sock.send_multipart([ident, p.encode(msg)], flags=zmq.NOBLOCK)

    def _reply(self, ident: bytes, call_id: int, **result) -> None:
        self._send(ident, p.Reply(op="reply", id=call_id, result=result))

    def _answer_prep(self, caller: Caller, seq: Sequence) -> None:
        ps = self.sched.page_size
        seq.kv_token = issue_token()
        addr = p.WireKVAddr(engine_id=self.id, page_ids=seq.pages[seq.begin // ps:], page_size=ps,
                            begin=seq.begin, end=seq.target, token=seq.kv_token)
        self._reply(caller.ident, caller.call_id, kv_addr=addr.model_dump(), matched=seq.begin)

    def _fail(self, seq: Sequence, reason: str, error: type[EngineCallError]) -> None:
        """Tell whoever waits on `seq` that it is over (released, expired, failed), as `error`."""
        if self.stream_out.pending:
            self.stream_out.flush()  # tokens a stream produced go out before its error
        handle, seq.handle = seq.handle, None
        if isinstance(handle, OutgoingSend):
            seq.handle = handle
            self.sender.fail(handle, reason, kind=error.kind)
        elif isinstance(handle, Caller):
            self._send(handle.ident, p.Error(op="error", id=handle.call_id, error=reason, kind=error.kind))

    def _send_over(self, send: OutgoingSend) -> None:
        if send.error is None:
            self._reply(send.ident, send.call_id, bytes=send.bytes_sent)
        else:
            self._send(send.ident, p.Error(op="error", id=send.call_id, error=f"remote_send of request "
                                           f"{send.req_id} from {self.id} failed: {send.error}", kind=send.error_kind))
        if send.req_id in self._deferred_release:
            self._deferred_release.discard(send.req_id)
            for seq in self.sched.release(send.req_id):
                self._fail(seq, f"request {send.req_id} released on engine {self.id}", RequestReleased)

    # -- views --------------------------------------------------------------------------------
    def stats(self) -> dict:
        return engine_stats(self)

    def close(self) -> None:
        self.sender.close()
        self.sock.close(0)
        if self.authenticator is not None:
            self.authenticator.stop()
        if self._own_ctx:
            self.ctx.destroy(linger=0)
        self.close_pool()

    def close_pool(self) -> None:
        if self.shared is not None:
            self.shared.unlink()


def _user_id(frame) -> str | None:
    """The CURVE public key (z85) ZAP authenticated the frame's sender with; None without CURVE."""
    try:
        return frame.get("User-Id")
    except (zmq.ZMQError, AttributeError):
        return None
