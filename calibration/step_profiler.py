"""Time one real engine's step loop on chosen batch shapes, in-process.

What is timed is one iteration of `EngineWorker.serve()` while busy: `_poll(0)` (drain the
socket) then `step()` (expire, schedule, runner.execute, update, the streamed tokens queued or
sent to the router). That is the exact code a worker process runs per step, so the fitted cost
includes the scheduler, the metadata build, the sampler and the stream messages, not just the forward
pass: on a small model those are a large part of a step, and the simulator must charge them.

Shapes are produced through the scheduler's public calls, as an engine would see them:
- cached context for a prefill chunk or a decode batch is KV that "arrived" by prep_recv
  (add_receive + complete_receive), exactly the PD decode engine's path; no compute is spent
  making it (the KV contents are irrelevant to timing);
- the chunk size of a step is set by the engine's token budget (max_num_batched_tokens), which
  the profiler sets per step to the tokens it wants in that step.
Step samples stream nothing: sending tokens to the router is timed apart (`add(stream=True)`,
`step(flush=True)`, calibration.profile's stream samples), because a real engine sends one
message per `stream_interval_s`, not per step, and the simulator charges it that way. Streams go
to an in-process DEALER socket, so the messages really go out.
"""
from __future__ import annotations

import dataclasses
import itertools
import time

import numpy as np
import zmq

from core_api.scheduler import Batch
from core_api.sequence import Sequence
from core_api.step import StepFeatures
from core_api.types import Request, SamplingParams
from real.config import EngineSpec
from real.streams import Stream
from real.worker import EngineWorker


class ProfileError(RuntimeError):
    """A grid point cannot be set up on this engine (pool too small, bad shape)."""


class _RecordingRunner:
    """The worker's ModelRunner, remembering the batch it ran (for that step's features)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last: Batch | None = None

    def execute(self, batch: Batch):
        self.last = batch
        return self.inner.execute(batch)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@dataclasses.dataclass(slots=True)
class Timed:
    features: StepFeatures
    seconds: float


class StepProfiler:
    """An EngineWorker built in this process plus helpers that put shapes on its scheduler."""

    def __init__(self, spec: EngineSpec, seed: int = 0) -> None:
        spec = spec.model_copy(update={"listen": "tcp://127.0.0.1:0", "exit_with_parent": False})
        self.worker = EngineWorker(spec)
        self.recorder = _RecordingRunner(self.worker.runner)
        self.worker.runner = self.recorder
        self.sched = self.worker.sched
        # Fault in the whole KV pool now: a fresh shared-memory pool maps its pages on first
        # touch, which would charge page faults to whichever grid point reads a page first.
        # A long-running engine has touched all of it; that steady state is what we time.
        self.worker.pool.zero_()
        # A fresh pool hands out pages in address order, so a sequence's KV lies contiguous;
        # in a long-running engine its pages are scattered, and reading them is measurably
        # slower (2-4% of a small decode step here).
        self.sched.kv.scatter_free(seed)
        self.vocab = self.worker.model.config.vocab_size
        self.device = self.worker.model.device
        self.rng = np.random.default_rng(seed)
        self._ids = itertools.count()
        self.client = self.worker.ctx.socket(zmq.DEALER)
        self.client.setsockopt(zmq.LINGER, 0)
        self.ident = b"calibration-profiler"
        self.client.setsockopt(zmq.IDENTITY, self.ident)
        self.client.connect(self.worker.address)
        self._handshake()

    def _handshake(self) -> None:
        """One ping through the worker, so its ROUTER knows our identity before chunks flow."""
        from real import protocol as p

        self.client.send(p.encode(p.Ping(op="ping", id=0)))
        deadline = time.monotonic() + 10
        while not self.client.poll(10):
            self.worker._poll(10)
            if time.monotonic() > deadline:
                raise ProfileError("the in-process engine did not answer a ping")
        self.drain()

    def drain(self) -> None:
        while self.client.poll(0):
            self.client.recv_multipart()

    def close(self) -> None:
        self.client.close(0)
        self.worker.close()

    # -- shapes ---------------------------------------------------------------------------
    def request(self, prompt_len: int, max_tokens: int) -> Request:
        prompt = self.rng.integers(0, self.vocab, size=prompt_len, dtype=np.int32)
        return Request(f"prof{next(self._ids)}", prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True))

    def add(self, context: int, new: int, max_tokens: int = 1, stream: bool = False) -> Sequence:
        """A generating sequence whose first `context` prompt tokens already have KV here and
        whose next `new` tokens are the prompt's remainder (ready to be scheduled); with `stream`,
        its tokens are queued for the router as a real stream's are."""
        req = self.request(context + new, max_tokens)
        sched, now = self.sched, time.monotonic()
        if context:
            recv = sched.add_receive(req, context)
            if not sched.try_admit_receive(recv, now):
                sched.release(req.id)
                raise ProfileError(f"no room for {context} tokens of context: grow num_pages")
            sched.complete_receive(req.id, now)
        seq = sched.add_generate(req, context)
        seq.handle = Stream(self.ident, next(self._ids)) if stream else None
        return seq

    def release(self, seqs: list[Sequence]) -> None:
        for seq in seqs:
            seq.handle = None  # no error message for a sequence the profiler drops itself
            self.sched.release(seq.id)
        self.drain()

    def step(self, budget: int | None = None, flush: bool = False) -> Timed:
        """One timed loop iteration, with the token budget set to `budget` for this step; with
        `flush`, it ends by sending the queued stream tokens, as a step does when its interval is up."""
        cfg = self.sched.config
        saved = cfg.max_num_batched_tokens
        if budget is not None:
            cfg.max_num_batched_tokens = budget
        sync = _synchronizer(self.device)
        try:
            sync()
            t0 = time.perf_counter()
            self.worker._poll(0)
            ran = self.worker.step()
            if flush:
                self.worker.stream_out.flush()
            sync()
            seconds = time.perf_counter() - t0
        finally:
            cfg.max_num_batched_tokens = saved
        if not ran or self.recorder.last is None:
            raise ProfileError("the engine had nothing to run for this grid point")
        features, self.recorder.last = dataclasses.replace(self.recorder.last.features), None
        return Timed(features, seconds)

    def idle(self) -> bool:
        s = self.sched
        return not (s.running or s.waiting or s.receiving)


def _synchronizer(device):
    if device.type == "cuda":
        import torch

        return lambda: torch.cuda.synchronize(device)
    return lambda: None
