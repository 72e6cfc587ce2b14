"""RealEngine: the router's asyncio handle on one engine process; implements core_api's Engine.

One zmq DEALER socket per engine. Calls carry ids; a reader task routes every answer to the
future (or, for start_generate, the queue) waiting on it, so many requests share the socket
without head-of-line blocking. Every answer piggybacks the engine's load snapshot, which `load()`
returns without a round trip (plus optimistic local bumps for calls not yet reflected in it).

Liveness: a heartbeat pings the engine; if nothing at all comes back for `heartbeat_timeout_s`
(or the launcher reports the process dead via `mark_dead`), every pending call and stream fails
at once with EngineCallError naming the engine and the reason, and later calls fail immediately.
The router keeps serving through the other engines.

Token times: engines stamp tokens with their own monotonic clock. The heartbeat estimates the
engine's clock offset (exactly 0 on the same host, where CLOCK_MONOTONIC is shared), and chunks
are shifted onto the router's runtime clock (`time_origin` = monotonic time of runtime zero).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import replace

import zmq
import zmq.asyncio

from core_api.engine import EngineLoad
from core_api.errors import EngineCallError, EngineDown, error_of_kind
from core_api.types import KVAddr, Request, TokenChunk
from real import protocol as p
from real.pool_files import host_key, unlink_pool
from real.streams import StreamBuffer

log = logging.getLogger(__name__)


def _refused(address: str) -> str | None:
    """Why a tcp:// address refuses connections right now (None: it accepts, or cannot be told).
    zmq itself retries a refused connection for ever, which would make a typo wait for minutes."""
    import socket

    if not address.startswith("tcp://"):
        return None
    host, _, port = address[len("tcp://"):].rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=2.0):
            return None
    except ConnectionRefusedError as exc:
        return exc.strerror or "connection refused"
    except (OSError, ValueError):
        return None  # unreachable for now or unparsable: the hello retries and times out


def _process_alive(pid: int) -> bool:
    """True unless the process is gone or a zombie (dead, waiting for its parent to reap it)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process has that pid now: not ours to judge
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


class RealEngine:
    def __init__(self, address: str, engine_id: str | None = None, directory: dict[str, RealEngine] | None = None,
                 heartbeat_s: float = 0.5, heartbeat_timeout_s: float = 30.0,
                 ctx: zmq.asyncio.Context | None = None, keys=None) -> None:
        self.address = address
        self.keys = keys  # real.keys.CurveKeys: talk CURVE to an engine started with keys
        self.id: str | None = engine_id  # None: adopt the engine's own id at hello
        self.directory = directory if directory is not None else {}
        self.heartbeat_s, self.heartbeat_timeout_s = heartbeat_s, heartbeat_timeout_s
        self.ctx = ctx or zmq.asyncio.Context.instance()
        self.info: dict = {}
        self.host = ""
        self.time_origin = 0.0
        self.down: str | None = None
        self.incarnation = 0  # bumped each time the engine is taken back after being down
        self._ids = itertools.count(1)
        self._calls: dict[int, asyncio.Future] = {}
        self._streams: dict[int, StreamBuffer] = {}
        self._load: EngineLoad | None = None
        self._bump = (0, 0, 0)  # waiting, receiving, queued prefill tokens not yet in a snapshot
        self._offset, self._best_rtt = 0.0, float("inf")
        self._same_host = False
        self._last_rx = time.monotonic()
        self._tasks: list[asyncio.Task] = []
        self.sock: zmq.asyncio.Socket | None = None

    # -- lifecycle ------------------------------------------------------------------------
    async def connect(self, timeout_s: float = 30.0) -> RealEngine:
        """Open the socket, say hello (retrying until `timeout_s`), start reader and heartbeat."""
        self.sock = self.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 0)
        self.sock.setsockopt(zmq.SNDHWM, 0)
        refused = _refused(self.address)
        if refused:
            raise EngineDown(f"nothing listens at {self.address} ({refused}): is the engine started?")
        if self.keys is not None:
            self.keys.client(self.sock)
        self.sock.connect(self.address)
        self._tasks.append(asyncio.ensure_future(self._reader()))
        deadline = time.monotonic() + timeout_s
        while True:
            t0 = time.monotonic()
            try:
                info = await asyncio.wait_for(self._call(p.Hello(op="hello", id=0)), min(2.0, timeout_s))
                break
            except (asyncio.TimeoutError, EngineDown):
                await asyncio.sleep(0.05)
                if time.monotonic() > deadline:
                    await self.close()
                    keys = f"CURVE keys ({self.keys.directory})" if self.keys else "no keys"
                    raise EngineDown(f"engine at {self.address} did not answer hello within {timeout_s:g} s (this "
                                     f"router uses {keys}; an engine started with --keys answers only clients "
                                     "holding that directory's keys)")
        if self.id is not None and self.id != info["engine_id"]:
            await self.close()
            raise EngineCallError(f"engine at {self.address} is {info['engine_id']!r}, expected {self.id!r}")
        self.info, self.id, self.host = info, info["engine_id"], info["host"]
        self._same_host = self.host == host_key()
        self._clock_sample(t0, time.monotonic(), info["now"])
        self._last_rx = time.monotonic()
        self._tasks.append(asyncio.ensure_future(self._heartbeat()))
        return self

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        self._fail_all(EngineDown(f"engine {self.id}: client closed"))
        if self.sock is not None:
            self.sock.close(0)
            self.sock = None

    def mark_dead(self, reason: str) -> None:
        """The engine is gone: fail everything pending now, and every later call at once."""
        if self.down is None:
            self.down = reason
            log.warning("engine %s is down: %s", self.id, reason)
        self._fail_all(EngineDown(f"engine {self.id} ({self.address}) is down: {self.down}"))

    def _fail_all(self, exc: Exception) -> None:
        calls, self._calls = self._calls, {}
        for fut in calls.values():
            if not fut.done():
                fut.set_exception(exc)
        for buf in self._streams.values():
            buf.fail(exc)

    # -- plumbing -------------------------------------------------------------------------
    def _post(self, msg, force: bool = False) -> None:
        if self.down is not None and not force:
            raise EngineDown(f"engine {self.id} ({self.address}) is down: {self.down}")
        if self.sock is None:
            raise EngineCallError(f"engine {self.id}: not connected")
        sent = self.sock.send(p.encode(msg), flags=zmq.NOBLOCK)  # a NOBLOCK send's future is done at once
        if sent.done() and sent.exception() is not None:
            # zmq.Again: no connection took it (not up yet, or the CURVE handshake was refused).
            raise EngineDown(f"engine {self.id or self.address}: cannot send ({sent.exception()})")

    async def _call(self, msg, force: bool = False) -> dict:
        if msg.id == 0:
            msg.id = next(self._ids)
        fut = asyncio.get_running_loop().create_future()
        self._calls[msg.id] = fut
        try:
            self._post(msg, force)
            return await fut
        finally:
            self._calls.pop(msg.id, None)

    async def _reader(self) -> None:
        sock = self.sock
        while True:
            frames = await sock.recv_multipart()
            self._last_rx = time.monotonic()
            try:
                self._dispatch(p.decode_client_msg(frames[0]))
            except p.ProtocolError as exc:
                log.warning("engine %s sent a bad message: %s", self.id, exc)
            except Exception:  # a bug here must not silence the engine for every caller
                log.exception("engine %s: cannot dispatch an answer", self.id)

    def _dispatch(self, msg) -> None:
        """Route one answer: the load snapshot it carries, then its streams' buffers or its call's future."""
        if msg.load is not None and self.info:
            self._load = p.load_from_wire(self.id, msg.load)
            self._bump = (0, 0, 0)
        if msg.op == "chunks":
            self._feed(msg)
            return
        buf = self._streams.get(msg.id)
        if buf is not None:  # a stream's failure
            buf.fail(error_of_kind(msg.kind, msg.error) if isinstance(msg, p.Error) else
                     EngineCallError(f"engine {self.id}: unexpected {msg.op!r} on stream {msg.id}"))
            return
        fut = self._calls.get(msg.id)
        if fut is None or fut.done():
            if isinstance(msg, p.Error):
                log.warning("engine %s: %s", self.id, msg.error)
            return
        if isinstance(msg, p.Error):
            fut.set_exception(error_of_kind(msg.kind, msg.error))
        else:
            fut.set_result(msg.result)

    def _feed(self, msg: p.Chunks) -> None:
        """One step's tokens of this connection's streams, shifted onto the runtime clock."""
        streams, shift = self._streams, self._offset + self.time_origin
        for call_id, token, t in zip(msg.ids, msg.tokens, msg.times):
            buf = streams.get(call_id)
            if buf is not None:
                buf.tokens.append(token)
                buf.times.append(t - shift)
                buf.wake()
        for call_id, reason in zip(msg.finished, msg.reasons):
            buf = streams.get(call_id)
            if buf is not None:
                buf.finished, buf.reason = True, reason

    async def _heartbeat(self) -> None:
        rejoining: asyncio.Task | None = None
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if self.down is not None:
                # A dead engine may come back (a stall ends, a process is restarted on its
                # address): keep knocking, and take it back as a new incarnation when it answers.
                self._remove_dead_pool()
                if rejoining is None or rejoining.done():
                    rejoining = asyncio.ensure_future(self._rejoin())
                continue
            silent = time.monotonic() - self._last_rx
            if silent > self.heartbeat_timeout_s:
                self.mark_dead(f"no answer for {silent:.1f} s (heartbeat timeout {self.heartbeat_timeout_s:g} s)")
                continue
            asyncio.ensure_future(self._ping())

    def _remove_dead_pool(self) -> None:
        """An engine on this host whose process is gone cannot remove its shared-memory KV pool
        file itself (killed, it ran no exit code): the router does, once the process is gone
        (a stalled engine's process still exists, so its pool stays)."""
        pool, pid = self.info.get("shm"), self.info.get("pid")
        if not (pool and pid and self._same_host):
            return
        if _process_alive(pid):
            return  # still there (stalled, or answering again soon)
        unlink_pool(pool)
        self.info = {**self.info, "shm": None}

    async def _rejoin(self) -> None:
        """Hello to a down engine; if it answers, fence off its earlier incarnation (reset: the
        requests it held already failed here, so its work on them would be zombie work) and
        serve again."""
        try:
            info = await asyncio.wait_for(self._call(p.Hello(op="hello", id=0), force=True), 2 * self.heartbeat_s)
            if info["engine_id"] != self.id:
                return
            await asyncio.wait_for(self._call(p.Reset(op="reset", id=0, incarnation=self.incarnation + 1), force=True),
                                   10.0)
        except (asyncio.TimeoutError, EngineCallError):
            return
        self.info, self.incarnation = info, self.incarnation + 1
        self._last_rx = time.monotonic()
        self._announced = False
        log.warning("engine %s rejoined as incarnation %d (was down: %s)", self.id, self.incarnation, self.down)
        self.down = None

    async def round_trip(self) -> float:
        """Seconds for one ping to the engine and back (its loop answers between steps)."""
        t0 = time.perf_counter()
        await self._call(p.Ping(op="ping", id=0))
        return time.perf_counter() - t0

    async def _ping(self) -> None:
        t0 = time.monotonic()
        try:
            result = await self._call(p.Ping(op="ping", id=0))
        except EngineCallError:
            return
        self._clock_sample(t0, time.monotonic(), result["now"])

    def _clock_sample(self, t_send: float, t_recv: float, engine_now: float) -> None:
        if self._same_host:
            self._offset = 0.0
            return
        rtt = t_recv - t_send
        if rtt < self._best_rtt:
            self._best_rtt, self._offset = rtt, engine_now - (t_send + t_recv) / 2

    # -- the Engine protocol --------------------------------------------------------------
    async def prep_recv(self, req: Request, end: int | None = None) -> tuple[KVAddr, int]:
        w, r, q = self._bump
        self._bump = (w, r + 1, q)
        result = await self._call(p.PrepRecv(op="prep_recv", id=0, req=p.WireRequest.of(req), end=end))
        return p.WireKVAddr(**result["kv_addr"]).to_kv_addr(), int(result["matched"])

    async def remote_send(self, req: Request, kv_addr: KVAddr, dst: str, begin: int, end: int | None = None) -> None:
        peer = self.directory.get(dst)
        if peer is None or kv_addr.engine_id != dst:
            raise ValueError(f"remote_send to {dst!r}: unknown engine or KVAddr of {kv_addr.engine_id!r}")
        w, r, q = self._bump
        self._bump = (w + 1, r, q + req.resolve(end) - begin)
        await self._call(p.RemoteSend(
            op="remote_send", id=0, req=p.WireRequest.of(req), kv_addr=p.WireKVAddr.of(kv_addr), dst=dst,
            dst_address=peer.address, dst_host=peer.host, dst_rank=_rank(peer.info.get("nccl_rank")),
            begin=begin, end=end))

    async def start_generate(self, req: Request, begin: int = 0) -> AsyncIterator[TokenChunk]:
        call_id = next(self._ids)
        buf = self._streams[call_id] = StreamBuffer()
        finished = False
        try:
            self._post(p.StartGenerate(op="start_generate", id=call_id, req=p.WireRequest.of(req), begin=begin))
            w, r, q = self._bump
            self._bump = (w + 1, r, q + req.prompt_len - req.resolve(begin))
            loop = asyncio.get_running_loop()
            while not finished:
                if not buf.tokens and buf.error is None and not buf.finished:
                    buf.waiter = loop.create_future()
                    await buf.waiter
                if buf.error is not None:
                    raise buf.error
                tokens, times, finished = buf.tokens, buf.times, buf.finished  # all that piled up: one chunk
                buf.tokens, buf.times = [], []
                yield TokenChunk(tokens, times, finished=finished, finish_reason=buf.reason if finished else None)
        finally:
            self._streams.pop(call_id, None)
            if not finished and self.down is None and self.sock is not None:
                try:  # an abandoned stream must not keep running (and holding pages) on the engine
                    asyncio.get_running_loop().create_task(self._quiet_release(req.id))
                except RuntimeError:
                    pass

    async def _quiet_release(self, req_id: str) -> None:
        try:
            await self.release(req_id)
        except EngineCallError:
            pass

    async def release(self, req_id: str) -> None:
        await self._call(p.Release(op="release", id=0, req_id=req_id))

    async def cached_prefix_len(self, req: Request) -> int:
        result = await self._call(p.CachedPrefixLen(op="cached_prefix_len", id=0, req=p.WireRequest.of(req)))
        return int(result["tokens"])

    @property
    def healthy(self) -> bool:
        return self.down is None

    def load(self) -> EngineLoad:
        """The latest snapshot (EngineLoad.down for a dead engine)."""
        if self.down is not None:
            return EngineLoad.down(self.id, self.info.get("num_pages", 0), self.info.get("page_size", 16))
        load = self._load
        if load is None:
            ps = self.info.get("page_size", 16)
            n = self.info.get("num_pages", 0)
            load = EngineLoad(self.id, 0, 0, 0, 0, n, 0, n, ps)
        w, r, q = self._bump
        if w or r or q:
            load = replace(load, num_waiting=load.num_waiting + w, num_receiving=load.num_receiving + r,
                           queued_prefill_tokens=load.queued_prefill_tokens + q)
        return load

    # -- management -----------------------------------------------------------------------
    async def stats(self) -> dict:
        return await self._call(p.Stats(op="stats", id=0))

    async def peer_down(self, engine_id: str, address: str = "") -> None:
        await self._call(p.PeerDown(op="peer_down", id=0, engine_id=engine_id, address=address))

    async def link_fault(self, dst: str, duration: float, factor: float | None = None) -> None:
        """Fault injection: hold (factor None) or slow down this engine's KV sends to `dst`."""
        await self._call(p.LinkFault(op="link_fault", id=0, dst=dst, duration=duration, factor=factor))

    async def shutdown(self) -> None:
        await self._call(p.Shutdown(op="shutdown", id=0))


def _rank(rank: int | None) -> int:
    return -1 if rank is None else rank
