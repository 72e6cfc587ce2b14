"""What streaming tokens to the router costs a real engine process, and when it pays it.

A real engine (real.streams.StreamOut) queues each step's sampled tokens right after the step and
sends them as one message once the oldest queued token is `interval_s` old, at once when a stream
starts or ends (or `interval_s` is 0), and before it goes idle. All of that runs on the engine's
own core between two steps, after the tokens' times were stamped: it delays the next step, not
the tokens. Measured by `calibrate profile` (calibration.profile's stream samples): on a CPU
engine a message costs about as much as a small decode step, a third of it the slower step after
it (the send evicts the model's working set from the core's caches), which a profile of steps
alone never sees, since it sends no message in most steps.

`StreamQueue` replays StreamOut's rule on simulated time; SimEngine asks it after every step.
"""
from __future__ import annotations

from pydantic import Field

from core_api.config_base import Strict


class StreamCost(Strict):
    """The engine's stream interval and the measured cost of what it does per step and message."""

    interval_s: float = Field(0.0, ge=0, description="the engines' stream_interval_s (0: a message per step)")
    message_s: float = Field(ge=0, description="per message: encoding and sending it, and the slower step after it")
    step_s: float = Field(ge=0, description="per step that queues tokens")
    token_s: float = Field(ge=0, description="per token queued")

    def seconds(self, steps: int, tokens: int, messages: int) -> float:
        """What queueing `tokens` over `steps` steps and sending `messages` messages costs."""
        return self.step_s * steps + self.token_s * tokens + self.message_s * messages


class StreamQueue:
    """StreamOut's sending rule over simulated time: which steps send a message, at what cost."""

    __slots__ = ("cost", "pending", "since")

    def __init__(self, cost: StreamCost) -> None:
        self.cost = cost
        self.pending = 0  # tokens queued, not yet sent
        self.since = 0.0  # when the oldest of them was queued

    def after_step(self, now: float, tokens: int, urgent: bool) -> float:
        """Seconds the engine spends after a step that sampled `tokens` streamed tokens (`urgent`:
        a stream started or ended in it)."""
        if not tokens:
            return 0.0
        c = self.cost
        if not self.pending:
            self.since = now
        self.pending += tokens
        send = urgent or not c.interval_s or now - self.since >= c.interval_s
        if send:
            self.pending = 0
        return c.seconds(1, tokens, send)

    def before_idle(self) -> float:
        """Seconds to send what is queued before the engine waits for work."""
        if not self.pending:
            return 0.0
        self.pending = 0
        return self.cost.seconds(0, 0, 1)
