"""Host effects of a real engine process that the simulator can add to SimEngine, all off by
default (and then free of events, so exact timings elsewhere stay exact):

- `rpc_latency_s`: the round trip of a control call router <-> engine, half each way: prep_recv
  and remote_send pay both halves, start_generate the dispatch half (its tokens carry engine
  times, so the reply half is never seen);
- `send_overhead_s`: the sender engine's own CPU per remote_send (call handling, shipping,
  acknowledgements), added to its next step;
- `recv_overhead_s`: the receiving engine's CPU per KV handoff (the prep_recv call, landing the
  KV, completing the reservation), added to its next step once the handoff completes;
- `generate_overhead_s`, `handoff_generate_overhead_s`: the engine's CPU handling a start_generate
  call (of a new request; of one whose KV was handed to it), added to its next step;
- `calls_between_steps`: a real engine reads its socket between steps only, so a prep_recv is
  answered, a KV chunk lands and its acknowledgement reaches the sender when the step each
  engine is running ends (new work waits for the next schedule anyway);
- `router_cpu_per_token_s`: a router on the engines' own cores (a small CPU host) decodes every
  streamed token, and that time comes out of the engines', split evenly: on a 2-core host the
  engines' measured wait for their cores during a validation run equals the router's CPU time,
  about half each, even at half load (the kernel wakes the router beside a busy engine, not
  on the idle core). A step in progress ends later by its share (the router ran during it: a
  validation's per-step log showed prefill steps as much longer than their CPU time as decode
  steps); an engine between steps pays it in its next step;
- `stream` (sim.stream_cost): queueing streamed tokens and sending them to the router, between
  steps, one message per stream interval;
- `idle` (sim.idle_cost): the first step after the engine sat idle runs slower, by more the
  longer it sat.

All are measured by calibration (cluster_profile, profile) and set by calibration.validate.
"""
from __future__ import annotations

from core_api.errors import EngineDown
from sim.runtime import SimWait


class HostEffects:
    """Mixed into SimEngine, which sets the attributes these read."""

    async def _hop(self, inbox: bool = False) -> None:
        """One way of a control call (half the round trip), then, with `inbox`, until the engine
        reads its socket. Awaiting it costs no event when both are zero."""
        if self._half_rpc:
            await SimWait(self.env.timeout(self._half_rpc))
        if self._frozen_until > self.env.now:  # a stalled engine reads nothing until it resumes
            life = self.incarnation
            await SimWait(self.env.timeout(self._frozen_until - self.env.now) | self._died)
            if life != self.incarnation:  # declared dead meanwhile: the router fails the call then
                raise EngineDown(f"engine {self.id} is down: {self.down}")
        wait = self._inbox_wait() if inbox else 0.0
        if wait:
            await SimWait(self.env.timeout(wait))

    def _inbox_wait(self) -> float:
        """Seconds until this engine's loop next reads its socket: the end of the step in progress
        (with calls read between steps the loop steps one step at a time, no decode runs)."""
        now = self.env.now
        return self._step_end - now if self._step_end > now else 0.0

    def _when_read(self, then) -> None:
        """Run `then` when this engine next reads its socket: at once, or with
        `calls_between_steps` at the end of the step in progress."""
        wait = self._inbox_wait() if self.calls_between_steps else 0.0
        if wait:
            self.env.timeout(wait).callbacks.append(lambda _ev: then())
        else:
            then()

    def _router_work(self, tokens: int) -> None:
        """The router decodes these tokens on the engines' cores, an equal share from each (see
        the module docstring for why an idle engine's core is no refuge): a step in progress ends
        that much later, since the router runs while it does; an engine between steps pays it in
        its next step."""
        engines = self.peers.values()
        seconds = tokens * self.router_cpu_per_token_s
        self.router_cpu_s += seconds
        share = seconds / len(engines)
        for e in engines:  # a step in progress ends later; between steps, the next step pays it
            if e._in_step:
                e._stolen += share
            else:
                e.charge(share)

    def _stream_after_step(self, result) -> float:
        """Seconds of queueing and sending a step's streamed tokens (sim.stream_cost): every
        sampled sequence streams (start_generate's), and one that started or ended sends at once."""
        urgent = bool(result.finished) or any(len(seq.output) == 1 for seq in result.sampled)
        return self._streams.after_step(self.env.now, len(result.sampled), urgent)

    def _stream_before_idle(self) -> float:
        """Seconds to send the queued tokens before the loop waits for work (0: none queued)."""
        return self._streams.before_idle() if self._streams is not None else 0.0

    def _after_idle(self) -> None:
        """This step ends an idle spell: it pays the measured extra of a step after that long idle."""
        idle, self._idle_since = self.env.now - self._idle_since, None
        self.charge(self._idle_cost.seconds(idle))

    def _busy(self, seconds: float):
        """The loop works `seconds` outside a step (calls reaching it wait until it is done)."""
        self._step_end = self.env.now + seconds
        self.busy_s += seconds
        yield self.env.timeout(seconds)

    def charge(self, seconds: float) -> None:
        """CPU time this engine owes to work outside its steps (calls, a router on its core),
        added to its next step."""
        self._overhead += seconds
