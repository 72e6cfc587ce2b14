"""SimEngine: one simulated engine, a SimPy process stepping the shared Scheduler.

Each step reads as three lines: the scheduler picks a batch, the cost model says how long it
takes (simulated time advances), the scheduler applies the result. Streams are coalesced: a
start_generate consumer wakes on its first token and at its end, with every token's exact time
in the chunk, so a simulation costs O(steps + requests) events rather than O(tokens).
KV produced for a remote_send is shipped chunk by chunk as prefill steps complete, so transfer
overlaps compute; remote_send returns once the last byte has landed on the receiver.
Runs of identical decode steps are applied as one timeout (sim.decode_run). Host effects of a
real engine process (control-call latency, CPU outside steps, calls read between steps, a router
on the same cores, sending streamed tokens): sim.host and sim.stream_cost, all off by default.
"""
from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

import simpy

from core_api.engine import EngineLoad
from core_api.errors import RequestRejected, RequestReleased, ReservationExpired, TransferFailed
from core_api.scheduler import Scheduler, SchedulerConfig
from core_api.sequence import FINISHED, SENT, Sequence
from core_api.types import KVAddr, Request, TokenChunk
from sim.decode_run import DecodeRuns
from sim.engine_faults import EngineFaults
from sim.host import HostEffects
from sim.idle_cost import IdleCost
from sim.runtime import SimWait
from sim.stream_cost import StreamCost, StreamQueue

if TYPE_CHECKING:
    from sim.cost_model import CostModel
    from sim.network import Network


class _Stream:
    __slots__ = ("done", "first")

    def __init__(self, env: simpy.Environment) -> None:
        self.first, self.done = env.event(), env.event()


class _Send:
    __slots__ = ("computed", "done", "dst", "error", "in_flight", "shipped")

    def __init__(self, env: simpy.Environment, dst: SimEngine, begin: int) -> None:
        self.done = env.event()
        self.dst, self.shipped, self.in_flight = dst, begin, 0
        self.computed, self.error = False, None


class SimEngine(HostEffects, EngineFaults, DecodeRuns):

    def __init__(self, env: simpy.Environment, engine_id: str, scheduler: SchedulerConfig,
                 cost_model: CostModel, network: Network, kv_bytes_per_token: float,
                 peers: dict[str, SimEngine], rpc_latency_s: float = 0.0, send_overhead_s: float = 0.0,
                 recv_overhead_s: float = 0.0, generate_overhead_s: float = 0.0,
                 handoff_generate_overhead_s: float = 0.0,
                 calls_between_steps: bool = False, router_cpu_per_token_s: float = 0.0,
                 stream_cost: StreamCost | None = None, idle_cost: IdleCost | None = None) -> None:
        self.env, self.id = env, engine_id
        self.sched = Scheduler(scheduler)
        self.cost_model, self.network = cost_model, network
        self.kv_bytes_per_token = kv_bytes_per_token
        self.peers = peers  # every engine of the cluster by id, this one included
        self._half_rpc = rpc_latency_s / 2
        self.send_overhead_s, self.recv_overhead_s = send_overhead_s, recv_overhead_s
        # a start_generate's handling: of a new request, and of one whose KV was handed over (begin > 0)
        self._generate_call_s = (generate_overhead_s, handoff_generate_overhead_s)
        self._overhead = 0.0  # CPU owed to calls, charged to the next step
        self._in_step = False  # a single step is running (a decode run prices its steps ahead)
        self._stolen = 0.0  # CPU another process took from the step in progress, which it stretches
        self.calls_between_steps = calls_between_steps
        self.router_cpu_per_token_s = router_cpu_per_token_s
        self.router_cpu_s = 0.0  # the router's CPU charged for this engine's streamed tokens (sim.host)
        self._streams = StreamQueue(stream_cost) if stream_cost is not None else None
        self._idle_cost = idle_cost
        self._idle_since: float | None = None  # start of the idle spell in progress (with an idle cost)
        self._step_end = 0.0  # end of the (single) step in progress
        self._wake: simpy.Event | None = None  # set while idle
        self._run_end: simpy.Event | None = None  # set during a decode run
        self._run_times: list[float] = []
        self._run_cut: int | None = None  # steps of the run to apply, when cut short
        self._run_batch = None  # the batch a decode run repeats
        self._run_claimed = 0  # steps of the run whose pages its sequences hold (_claim_run_pages)
        self.steps = 0
        self.busy_s = 0.0
        # Apply runs of identical decode steps at once (exact same times; see decode_run_length).
        self.fast_forward = True
        # (time, running, waiting, share of pages in use) at every scheduling decision, when a
        # caller wants the queue over time (replay compares it with a real engine's log).
        self.queue_trace: list[tuple[float, int, int, float]] | None = None
        self._init_faults()
        env.process(self._loop())

    # -- the microserving API -------------------------------------------------------------
    async def prep_recv(self, req: Request, end: int | None = None) -> tuple[KVAddr, int]:
        await self._hop(inbox=self.calls_between_steps)  # the call reaches the engine and is read
        await self._check_up()
        seq = self.sched.add_receive(req, end)
        if self._taking_pages(lambda: self.sched.try_admit_receive(seq, self.env.now)):
            self._poke(at=seq.deadline)  # the loop must look at this reservation when it falls due
        else:
            self._poke()
            seq.handle = self.env.event()
            await SimWait(seq.handle)  # a failed admission throws its error here
        first = seq.begin // self.sched.page_size
        addr = KVAddr(self.id, tuple(seq.pages[first:]), self.sched.page_size, seq.begin, seq.target)
        await self._hop()  # the reply reaches the router
        return addr, addr.begin

    async def remote_send(self, req: Request, kv_addr: KVAddr, dst: str, begin: int,
                          end: int | None = None) -> None:
        await self._hop()
        await self._check_up()
        end = req.resolve(end)
        receiver = self.peers.get(dst)
        if receiver is None or kv_addr.engine_id != dst:
            raise ValueError(f"remote_send to {dst!r}: unknown engine or KVAddr of {kv_addr.engine_id!r}")
        if (begin, end) != (kv_addr.begin, kv_addr.end):
            raise ValueError(
                f"request {req.id}: remote_send range [{begin}, {end}) does not match the receiver's "
                f"reservation [{kv_addr.begin}, {kv_addr.end})"
            )
        seq = self._taking_pages(lambda: self.sched.add_send(req, begin, end))  # a cached range holds pages now
        seq.handle = send = _Send(self.env, receiver, begin)
        self.charge(self.send_overhead_s)
        if seq.status == SENT:  # served whole by the prefix cache: ship at once
            self._ship(seq, end)
        else:
            self._poke()
        try:
            await SimWait(send.done)
        finally:
            await self._hop()  # the answer, done or failed, reaches the router

    async def start_generate(self, req: Request, begin: int = 0):
        await self._hop()
        await self._check_up()
        seq = self.sched.add_generate(req, begin)
        seq.handle = stream = _Stream(self.env)
        cost = self._generate_call_s[begin > 0]
        if cost:
            self.charge(cost)
        self._poke()
        await SimWait(stream.first)
        yield TokenChunk(seq.output[:1], seq.token_times[:1], finished=seq.finish_reason is not None,
                         finish_reason=seq.finish_reason)
        if seq.finish_reason is not None and seq.status == FINISHED:
            return
        await SimWait(stream.done)
        yield TokenChunk(seq.output[1:], seq.token_times[1:], finished=True, finish_reason=seq.finish_reason)

    async def release(self, req_id: str) -> None:
        if self.down is not None:
            return  # nothing of it is left there
        self._claim_run_pages()  # pages a run's steps took so far go first, as when stepping
        for seq in self.sched.release(req_id):
            self._notify_failure(seq, RequestReleased(f"request {req_id} released on engine {self.id}"))
        self._pages_freed()
        self._poke()

    async def cached_prefix_len(self, req: Request) -> int:
        return self.sched.cached_prefix_len(req)

    def load(self) -> EngineLoad:
        if self.down is not None:
            return EngineLoad.down(self.id, self.sched.config.num_pages, self.sched.page_size)
        self._claim_run_pages()
        return self.sched.load(self.id)

    # -- the step loop --------------------------------------------------------------------
    def _loop(self):
        env = self.env
        while True:
            if self.down is not None or self._detected is not None:
                self._revived = env.event()
                yield self._revived
                continue
            if env.now < self._frozen_until:  # stalled: the process does nothing until it resumes
                yield env.timeout(self._frozen_until - env.now)
                continue
            sched, life = self.sched, self.incarnation
            if sched.receiving:
                for seq in sched.expire(env.now):
                    self._notify_failure(seq, ReservationExpired(
                        f"reservation for request {seq.id} on engine {self.id} expired"))
            out = sched.schedule(env.now)
            if self.queue_trace is not None:
                kv = sched.kv
                self.queue_trace.append((env.now, len(sched.running), len(sched.waiting),
                                         1.0 - kv.num_available / kv.num_pages))
            self._after_schedule(out)
            batch = out.batch
            if not batch:
                sending = self._stream_before_idle()
                if sending:  # queued tokens go out first
                    yield from self._busy(sending)
                    continue
                if self._idle_cost is not None and self._idle_since is None:
                    self._idle_since = env.now
                self._wake = env.event()
                deadline = self._next_expiry()
                # Reservations expire on time even on an engine with nothing else to do.
                yield self._wake if deadline is None else self._wake | env.timeout(max(0.0, deadline - env.now))
                continue
            if self._idle_since is not None:
                self._after_idle()
            # A decode run prices its steps ahead; work between steps (charges, streaming) and the
            # router's CPU taken during them are priced step by step. So are calls read between
            # steps: one reaches the loop exactly when a step ends, after the loop has begun the
            # next step, which a run cannot tell from new work that came before that step began.
            ahead = (self.fast_forward and not self._overhead and self._streams is None
                     and not self.router_cpu_per_token_s and not self.calls_between_steps)
            run = sched.decode_run_length(batch, out) if ahead else 1
            if run > 1:
                yield from self._decode_run(batch, run, life)
                continue
            start = env.now
            duration = self.cost_model.step_time(batch.features) * self._speed_factor(start)
            if self._overhead:
                duration, self._overhead = duration + self._overhead, 0.0
            self._step_end = start + duration
            self._in_step = True
            yield env.timeout(duration)
            while self._stolen:  # the step ends later by what the router took of its core meanwhile
                extra, self._stolen = self._stolen, 0.0
                duration += extra
                self._step_end = env.now + extra
                yield env.timeout(extra)
            self._in_step = False
            stretch = self._stall_extension(start, env.now)
            if stretch:
                yield env.timeout(stretch)
            if life != self.incarnation:
                continue  # the engine died during the step: its results died with it
            self.steps += 1
            self.busy_s += duration
            streaming = self._after_step(sched.update(batch, None, env.now), 1)
            if streaming:
                yield from self._busy(streaming)

    def _after_schedule(self, out) -> None:
        for seq in out.admitted_receives:
            if seq.handle is not None:
                seq.handle.succeed(None)
        for seq in out.failed:
            self._notify_failure(seq, RequestRejected(
                f"request {seq.id} failed on engine {self.id}: {seq.finish_reason}"))

    def _after_step(self, result, steps: int) -> float:
        """Notify streams and ship KV after `steps` steps (one, or a decode run); the seconds the
        engine then spends sending streamed tokens (sim.stream_cost; 0 when not modelled)."""
        if self.router_cpu_per_token_s and result.sampled:
            self._router_work(len(result.sampled) * steps)
        for seq in result.sampled:
            if len(seq.output) == 1:
                seq.handle.first.succeed(None)
        for seq in result.finished:
            if len(seq.output) > 1:
                seq.handle.done.succeed(None)
        for seq, start, stop in result.sends:
            self._ship(seq, stop)
        return self._stream_after_step(result) if self._streams is not None else 0.0

    def _ship(self, seq: Sequence, stop: int) -> None:
        """Send KV of [shipped, stop) to the receiver; finish the send once all has landed."""
        send: _Send = seq.handle
        if send.error is not None:
            return
        if stop > send.shipped:
            nbytes = (stop - send.shipped) * self.kv_bytes_per_token
            send.shipped = stop
            send.in_flight += 1
            self.network.transfer(self.id, send.dst.id, nbytes).callbacks.append(
                lambda _ev, seq=seq: self._landed(seq)
            )
        if seq.num_computed >= seq.target:
            send.computed = True
            self._maybe_done(seq)

    def _landed(self, seq: Sequence) -> None:
        """A chunk reached the receiver, which takes it in between its steps."""
        seq.handle.dst._when_read(lambda: self._land(seq))

    def _land(self, seq: Sequence) -> None:
        send: _Send = seq.handle
        send.in_flight -= 1
        if send.error is None and not send.dst.sched.touch_receive(seq.id, self.env.now):
            send.error = TransferFailed(
                f"request {seq.id}: reservation on {send.dst.id} expired or was released during the transfer"
            )
        self._maybe_done(seq)

    def _maybe_done(self, seq: Sequence) -> None:
        send: _Send = seq.handle
        if send.in_flight or not (send.computed or send.error):
            return
        if send.error is None:
            try:
                send.dst.sched.complete_receive(seq.id, self.env.now)
                send.dst.charge(send.dst.recv_overhead_s)  # the receiver's CPU for the handoff
            except KeyError as exc:
                send.error = TransferFailed(str(exc.args[0]))
            send.dst._pages_freed()  # its reservation no longer counts against admissions
        self._when_read(lambda: self._send_over(seq))  # the acknowledgement reaches us

    def _send_over(self, seq: Sequence) -> None:
        send: _Send = seq.handle
        self._claim_run_pages()
        self.sched.finish_send(seq.id)
        self._pages_freed()
        if not send.done.triggered:
            _settle(send.done, send.error)

    def _notify_failure(self, seq: Sequence, error: Exception) -> None:
        handle = seq.handle
        if isinstance(handle, _Stream):
            event = handle.done if handle.first.triggered else handle.first
        elif isinstance(handle, _Send):
            handle.error = handle.error or error
            if handle.in_flight:
                return  # _land finishes it once the bytes in flight are accounted
            event = handle.done
            self._claim_run_pages()
            self.sched.finish_send(seq.id)
            self._pages_freed()
        else:
            event = handle
        if event is not None and not event.triggered:
            _settle(event, error)

    def _next_expiry(self) -> float | None:
        """When the first held reservation expires (None if none is held)."""
        receiving = self.sched.receiving
        return min(s.deadline for s in receiving.values()) if receiving else None

    def _pages_freed(self) -> None:
        """Pages came free outside the step loop: queued work may now be admitted, which a real
        engine does at its next scheduling decision (an idle one wakes on the message)."""
        if self.sched.waiting:
            self._poke()

    def _poke(self, at: float | None = None) -> None:
        """New work arrived (or something is due `at` a later time): wake an idle loop, or end a
        decode run after the step in progress at that time."""
        now = self.env.now
        at = now if at is None else at
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()
        elif self._run_end is not None:
            times = self._run_times
            done = bisect_left(times, at)  # the step in progress then (or ending right then)
            if done + 1 < len(times) and (self._run_cut is None or done + 1 < self._run_cut):
                self._run_cut = done + 1
                end = self._run_end
                self.env.timeout(times[done] - now).callbacks.append(lambda _ev: end.triggered or end.succeed())


def _settle(event: simpy.Event, error: Exception | None) -> None:
    """Succeed `event`, or fail it with `error`: the runtime throws the error into whoever awaits it
    (sim.runtime). Defused, because an abandoned stream's event may fail with nobody waiting, which
    SimPy would otherwise raise out of the whole simulation."""
    if error is None:
        event.succeed(None)
    else:
        event.fail(error)
        event.defused = True
