"""Faults of a simulated engine, applied to its clock: crash, restart, stall, slow-down.

Mixed into SimEngine (like sim.host), which reads what these set:
- `down`: why the engine is down, as the router knows it (None while it serves). A crash stops
  the engine at once (its pages vanish with the process) but the router learns of it only
  `detect_s` later, as real routers do from their process watchdog (0.1 s): then everything the
  engine held fails with EngineDown (a transfer it was sending or receiving fails on the other
  side as the real one would), and calls made meanwhile fail too. Calls to a down engine raise
  EngineDown at once.
- `incarnation`: bumped by every crash; the step loop drops the result of a step that was in
  progress when the engine died.
- stall windows: a frozen process (SIGSTOP): the step in progress ends that much later, nothing
  is read or computed meanwhile. A stall longer than the router's heartbeat timeout is a false
  death, as on real engines: the router declares the engine dead then (its requests fail), and
  when it wakes it rejoins as a new incarnation whose earlier work is released.
- slow windows: every step that starts inside one takes `factor` times as long.
"""
from __future__ import annotations

from core_api.errors import EngineDown
from core_api.scheduler import Scheduler
from sim.runtime import SimWait


class EngineFaults:
    def _init_faults(self) -> None:
        self.down: str | None = None
        self.incarnation = 0
        self._detected = None  # event: the router has noticed the crash in progress
        self._died = self.env.event()  # fires when the router declares this incarnation dead
        self._revived = None  # event the loop waits on while down
        self._stalls: list[tuple[float, float]] = []  # (start, duration)
        self._frozen_until = 0.0
        self._slow: list[tuple[float, float, float]] = []  # (start, end, factor)

    @property
    def healthy(self) -> bool:
        return self.down is None

    # -- applied by the cluster's fault process -------------------------------------------
    def crash(self, reason: str = "crashed", detect_s: float = 0.0) -> None:
        if self.down is not None or self._detected is not None:
            return
        now = self.env.now
        why = f"{reason} at {now:.3f} s"
        self.incarnation += 1
        old, self.sched = self.sched, Scheduler(self.sched.config)
        self._run_batch = None  # a run in progress belongs to the dead incarnation
        held = old.sequences()
        self._detected = self.env.event()

        def detected(_ev=None):
            self.down, detect, self._detected = why, self._detected, None
            error = EngineDown(f"engine {self.id} is down: {why}")
            for seq in held:
                self._notify_failure(seq, error)
            detect.succeed()
            died, self._died = self._died, self.env.event()
            died.succeed()  # calls still waiting to reach the engine fail now

        if detect_s > 0:
            self.env.timeout(detect_s).callbacks.append(detected)
        else:
            detected()
        self._poke(at=now)  # an idle loop wakes, a decode run ends with the step the crash cuts short

    def restart(self) -> None:
        if self.down is None:  # up, or dead but not noticed yet (restart then waits for detection)
            if self._detected is not None:
                self._detected.callbacks.append(lambda _ev: self.restart())
            return
        self.down = None
        if self._revived is not None and not self._revived.triggered:
            self._revived.succeed()

    def stall(self, duration: float, heartbeat_timeout_s: float | None = None) -> None:
        now = self.env.now
        self._stalls.append((now, duration))
        self._frozen_until = max(self._frozen_until, now + duration)
        self._poke(at=now)  # a decode run ends with the step in progress, which the stall stretches
        if heartbeat_timeout_s is not None and duration > heartbeat_timeout_s:
            self.env.timeout(heartbeat_timeout_s).callbacks.append(
                lambda _ev: self.crash(f"declared dead: no heartbeat for {heartbeat_timeout_s:g} s"))
            self.env.timeout(duration).callbacks.append(lambda _ev: self.restart())

    def slow(self, factor: float, duration: float) -> None:
        now = self.env.now
        self._slow.append((now, now + duration, factor))
        self._poke(at=now)  # steps from now on are priced at the new speed
        self.env.timeout(duration).callbacks.append(lambda _ev: self._poke(at=self.env.now))

    # -- read by the step loop and the calls ------------------------------------------------
    def _speed_factor(self, t: float) -> float:
        factor = 1.0
        for start, end, f in self._slow:
            if start <= t < end:
                factor *= f
        return factor

    def _stall_extension(self, start: float, end: float) -> float:
        """How much later a step [start, end) ends: the stalls that began during it."""
        return sum(d for s, d in self._stalls if start <= s < end)

    async def _check_up(self) -> None:
        """Raise EngineDown if the engine is down; a call to an engine that died unnoticed gets
        no answer until the router notices."""
        if self._detected is not None:
            await SimWait(self._detected)
        if self.down is not None:
            raise EngineDown(f"engine {self.id} is down: {self.down}")
