"""Simulated links between engines: per-transfer latency, then processor-shared bandwidth.

Model. Each directed link (src, dst) has a latency and a bandwidth. A transfer first waits its
latency (setup: handshake, descriptor exchange, kernel launch; the link carries none of its
bytes meanwhile), then its bytes flow. Transfers flowing on one link at the same time share the
bandwidth equally (processor sharing), the usual fluid model of several streams on one wire.
So a transfer of B bytes alone takes exactly latency + B / bandwidth, and two identical
transfers started together each finish at latency + 2B / bandwidth.

Implementation: virtual time. A link keeps V, the bytes delivered so far to each active flow
(every active flow has received the same amount since it joined). V grows at bandwidth / n
while n flows are active. A flow joining at V0 with B bytes finishes when V reaches V0 + B, its
finish tag. Flows sit in a heap by tag; each join or finish costs O(log n) and leaves exactly
one live timer per link (the next finish). SimPy timers cannot be cancelled, so a timer made
stale by a later reschedule carries an old generation number and is ignored when it fires.
When the timer fires, V is snapped to the finishing tag instead of recomputed from elapsed
time, so flows with equal tags finish together and no float residue is left over; V resets to
0 whenever the link goes idle, which keeps the arithmetic exact in simple cases.
"""
from __future__ import annotations

import heapq
from collections.abc import Mapping

import simpy
from pydantic import BaseModel, ConfigDict, Field

_REL_TOL = 1e-12  # flows whose tag is within this relative distance of V finish together


class LinkSpec(BaseModel):
    """One direction of a link: fixed per-transfer latency plus bandwidth in bytes per second."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    latency_s: float = Field(ge=0)
    bandwidth_Bps: float = Field(gt=0)

    def uncontended_time(self, nbytes: float) -> float:
        """Time of a transfer that has the link to itself."""
        return self.latency_s + nbytes / self.bandwidth_Bps


class _Link:
    """The live state of one directed link; see the module docstring for the model."""

    __slots__ = (
        "busy_s",
        "bw",
        "bytes",
        "env",
        "gen",
        "heap",
        "last",
        "latency",
        "max_active",
        "seq",
        "transfers",
        "vtime",
    )

    def __init__(self, env: simpy.Environment, spec: LinkSpec):
        self.env = env
        self.latency = spec.latency_s
        self.bw = spec.bandwidth_Bps
        self.heap: list[tuple[float, int, simpy.Event]] = []
        self.vtime = 0.0
        self.last = 0.0
        self.gen = 0
        self.seq = 0
        self.bytes = 0.0
        self.transfers = 0
        self.busy_s = 0.0
        self.max_active = 0

    def start(self, nbytes: float, done: simpy.Event) -> None:
        self.transfers += 1
        self.bytes += nbytes
        if self.latency > 0:
            self.env.timeout(self.latency).callbacks.append(lambda _ev: self._join(nbytes, done))
        else:
            self._join(nbytes, done)

    def _join(self, nbytes: float, done: simpy.Event) -> None:
        if nbytes <= 0:
            done.succeed(self.env.now)
            return
        self._advance()
        self.seq += 1
        heapq.heappush(self.heap, (self.vtime + nbytes, self.seq, done))
        self.max_active = max(self.max_active, len(self.heap))
        self._reschedule()

    def _advance(self) -> None:
        now = self.env.now
        n = len(self.heap)
        if n:
            dt = now - self.last
            self.vtime += dt * self.bw / n
            self.busy_s += dt
        self.last = now

    def _reschedule(self) -> None:
        self.gen += 1
        if not self.heap:
            self.vtime = 0.0
            return
        if self.bw <= 0:
            return  # partitioned: no finish until the bandwidth comes back
        delay = max((self.heap[0][0] - self.vtime) * len(self.heap) / self.bw, 0.0)
        gen = self.gen
        self.env.timeout(delay).callbacks.append(lambda _ev: self._on_timer(gen))

    def _on_timer(self, gen: int) -> None:
        if gen != self.gen:
            return  # superseded by a later join or finish
        now = self.env.now
        self.busy_s += now - self.last
        self.last = now
        heap = self.heap
        tag = heap[0][0]
        self.vtime = tag
        limit = tag + _REL_TOL * max(abs(tag), 1.0)
        while heap and heap[0][0] <= limit:
            heapq.heappop(heap)[2].succeed(now)
        self._reschedule()

    def set_bandwidth(self, bw: float) -> None:
        """Change the bandwidth from now on (0: nothing flows, a partition); flows keep the
        bytes they got so far."""
        self._advance()
        self.bw = bw
        self._reschedule()

    def stats(self) -> dict:
        return {"bytes": self.bytes, "transfers": self.transfers, "busy_s": self.busy_s,
                "max_concurrent": self.max_active, "active": len(self.heap)}


class Network:
    """All links of a simulated cluster. Links are directed and created on first use."""

    def __init__(self, env: simpy.Environment, default: LinkSpec | Mapping,
                 overrides: Mapping[tuple[str, str], LinkSpec | Mapping] | None = None):
        self.env = env
        self.default = LinkSpec.model_validate(default)
        self.overrides = {tuple(k): LinkSpec.model_validate(v) for k, v in (overrides or {}).items()}
        self._links: dict[tuple[str, str], _Link] = {}

    def spec(self, src: str, dst: str) -> LinkSpec:
        """The configured spec of the directed link src -> dst."""
        return self.overrides.get((src, dst), self.default)

    def transfer(self, src: str, dst: str, nbytes: float) -> simpy.Event:
        """Move nbytes from src to dst; the event's value is the arrival time.

        Same engine (src == dst) arrives at once; zero bytes arrive after the latency.
        """
        if nbytes < 0:
            raise ValueError(f"transfer {src}->{dst}: nbytes must be >= 0, got {nbytes}")
        done = self.env.event()
        if src == dst:
            return done.succeed(self.env.now)
        self._link(src, dst).start(nbytes, done)
        return done

    def _link(self, src: str, dst: str) -> _Link:
        link = self._links.get((src, dst))
        if link is None:
            link = self._links[(src, dst)] = _Link(self.env, self.spec(src, dst))
        return link

    def degrade(self, src: str, dst: str, duration: float, factor: float | None = None) -> None:
        """For `duration`, the link src -> dst carries 1/factor of its bandwidth, or nothing
        (factor None: a partition; transfers resume where they stopped when it ends)."""
        link = self._link(src, dst)
        nominal = self.spec(src, dst).bandwidth_Bps
        link.set_bandwidth(0.0 if factor is None else nominal / factor)
        self.env.timeout(duration).callbacks.append(lambda _ev: link.set_bandwidth(nominal))

    def stats(self) -> dict[str, dict]:
        """Per used link "src->dst": bytes, transfers, busy_s (time with bytes flowing), max_concurrent."""
        return {f"{s}->{d}": link.stats() for (s, d), link in sorted(self._links.items())}
