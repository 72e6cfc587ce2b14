"""Continuous batching with chunked prefill, shared by the simulated and the real engine.

One `schedule()` picks the next step's work, the backend executes it (a cost model's duration
or a real forward pass), and `update()` applies the sampled tokens. Both backends therefore make
the same decisions by construction; only the clock differs.

Policy (close to vLLM's v1 scheduler):
1. Running sequences first, in admission order: decodes take one token, unfinished prefills the
   rest of the token budget (chunked prefill). A sequence that needs a page when none is left
   preempts the most recently admitted generating sequence (recompute: its pages are released,
   computed prompt pages stay in the prefix cache, and it goes back to the head of the queue).
2. Then waiting sequences, first come first served, while the token budget, `max_num_seqs` and
   free pages (above a small watermark, so admissions do not thrash running work) allow. A
   reservation for incoming KV (prep_recv) is admitted the same way but needs no compute: all its
   pages are allocated at once and it waits for the transfer.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from pydantic import BaseModel, Field

from core_api.engine import EngineLoad
from core_api.hashing import request_page_keys
from core_api.kv_cache import BlockManager
from core_api.sequence import (
    ABORTED, FAILED, FINISHED, GENERATE, RECEIVE, RECEIVING, RUNNING, SEND, SENT, WAITING, Sequence,
)
from core_api.step import StepFeatures
from core_api.types import Request


class SchedulerConfig(BaseModel, extra="forbid"):
    num_pages: int = Field(gt=0)
    page_size: int = Field(16, gt=0)
    max_num_batched_tokens: int = Field(2048, gt=0)
    max_num_seqs: int = Field(256, gt=0)
    max_model_len: int = Field(32768, gt=0)
    watermark: float = Field(0.01, ge=0, lt=1)
    reservation_timeout_s: float = Field(30.0, gt=0)
    eos_token_id: int | None = None


class RequestRejected(ValueError):
    """The request can never run on this engine (too long for its context or its KV memory)."""


@dataclass(slots=True)
class Batch:
    """One step's work: rows [starts[i], starts[i] + num_new[i]) of seqs[i]."""

    seqs: list[Sequence] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    num_new: list[int] = field(default_factory=list)
    sample: list[bool] = field(default_factory=list)
    features: StepFeatures = field(default_factory=StepFeatures)

    def __len__(self) -> int:
        return len(self.seqs)


@dataclass(slots=True)
class ScheduleOutput:
    batch: Batch
    admitted_receives: list[Sequence]
    failed: list[Sequence]
    preempted: list[Sequence]


@dataclass(slots=True)
class StepResult:
    sampled: list[Sequence]  # got one token this step
    finished: list[Sequence]  # generation ended; pages released
    sends: list[tuple[Sequence, int, int]]  # SEND sequences that computed positions [a, b)


class Scheduler:
    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.kv = BlockManager(config.num_pages, config.page_size)
        self.page_size = config.page_size
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.receiving: dict[str, Sequence] = {}  # admitted reservations, by request id
        self.sending: dict[str, Sequence] = {}  # computed SEND sequences whose pages are in flight
        self._gen: dict[str, Sequence] = {}  # GENERATE or RECEIVE sequence of each request id
        self._send: dict[str, Sequence] = {}  # SEND sequence of each request id
        self._watermark_pages = int(config.watermark * config.num_pages)
        self.queued_prefill_tokens = 0
        self.num_preemptions = 0

    # -- intake ---------------------------------------------------------------------------
    def _check_fits(self, req: Request, tokens: int) -> None:
        cfg = self.config
        if tokens > cfg.max_model_len:
            raise RequestRejected(
                f"request {req.id}: {tokens} tokens (prompt {req.prompt_len} + max_tokens "
                f"{req.sampling.max_tokens}) exceed this engine's max context of {cfg.max_model_len}"
            )
        pages = self.kv.pages_for(tokens)
        if pages > cfg.num_pages:
            raise RequestRejected(
                f"request {req.id}: needs {pages} KV pages ({tokens} tokens), engine has {cfg.num_pages}"
            )

    def add_generate(self, req: Request, begin: int = 0) -> Sequence:
        """start_generate. KV of [0, begin) must be here already if begin > 0 came with prep_recv;
        without a reservation, begin is advisory and the prefix cache supplies what it holds."""
        begin = req.resolve(begin)
        self._check_fits(req, req.prompt_len + req.sampling.max_tokens)
        seq = self._gen.get(req.id)
        if seq is not None:
            if seq.kind != RECEIVE:
                raise ValueError(f"request {req.id} is already generating on this engine")
            filled = seq.num_computed
            if begin > filled:
                raise ValueError(
                    f"request {req.id}: start_generate(begin={begin}) but only KV of [0, {filled}) is here"
                )
            if seq.status != RECEIVING:
                raise ValueError(f"request {req.id}: start_generate before its prep_recv was admitted")
            # Already admitted (it holds its pages): it joins the running set directly, so a
            # reservation queued behind it can never block the sequence that would free memory.
            self.receiving.pop(req.id, None)
            self._unreserve(seq)
            seq.kind, seq.target, seq.status = GENERATE, req.prompt_len, RUNNING
            seq.deadline = float("inf")
            self.running.append(seq)
            self.queued_prefill_tokens += seq.prefill_remaining
            return seq
        seq = Sequence(req, GENERATE, target=req.prompt_len)
        self._gen[req.id] = seq
        self.waiting.append(seq)
        self.queued_prefill_tokens += seq.target
        return seq

    def add_send(self, req: Request, begin: int, end: int | None) -> Sequence:
        """remote_send: compute KV of prompt[:end] and ship [begin, end); never samples.
        The sequence comes back already SENT when the prefix cache holds the whole range."""
        end = req.resolve(end)
        if not 0 <= begin <= end:
            raise ValueError(f"request {req.id}: remote_send range [{begin}, {end}) is empty or reversed")
        if req.id in self._send:
            raise ValueError(f"request {req.id} is already sending from this engine")
        self._check_fits(req, end)
        seq = Sequence(req, SEND, target=end, begin=begin)
        self._send[req.id] = seq
        if end % self.page_size == 0 and self._send_from_cache(seq):
            return seq
        self.waiting.append(seq)
        self.queued_prefill_tokens += seq.target
        return seq

    def _send_from_cache(self, seq: Sequence) -> bool:
        """A send whose whole range is cached needs no compute, so it skips the queue (a context
        migration off a busy engine must not wait behind that engine's prefills). The returned
        sequence is then already SENT: the backend ships its pages at once."""
        hit = self._match_prefix(seq)
        if len(hit) * self.page_size < seq.target:
            seq.matched = False
            return False
        self.kv.acquire(hit)
        self.kv.hits += seq.target
        seq.pages, seq.num_registered = hit, len(hit)
        seq.num_cached = seq.num_computed = seq.target
        seq.status = SENT
        self.sending[seq.id] = seq
        return True

    def add_receive(self, req: Request, end: int | None, now: float) -> Sequence:
        """prep_recv: queue a reservation for prompt[matched:end]; admitted by schedule()."""
        end = req.resolve(end)
        if req.id in self._gen:
            raise ValueError(f"request {req.id} already has a sequence on this engine")
        self._check_fits(req, req.prompt_len + req.sampling.max_tokens)
        seq = Sequence(req, RECEIVE, target=end)
        self._gen[req.id] = seq
        self.waiting.append(seq)
        return seq

    # -- the step -------------------------------------------------------------------------
    def schedule(self, now: float = 0.0) -> ScheduleOutput:
        out = ScheduleOutput(Batch(), [], [], [])
        budget = self.config.max_num_batched_tokens
        batch, running = out.batch, self.running
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(seq.known_len - seq.num_computed, budget)
            need = self.kv.pages_for(seq.num_computed + n) - len(seq.pages)
            if need > 0:
                room = self._make_room(need, i, out)
                if room is None:  # the sequence preempted itself; running[i] is the next one
                    continue
                if not room:
                    i += 1
                    continue
                seq.pages += self.kv.allocate(need)
            self._add_to_batch(batch, seq, n)
            budget -= n
            i += 1
        self._admit(out, budget, now)
        return out

    def _make_room(self, need: int, i: int, out: ScheduleOutput) -> bool | None:
        """Preempt generating sequences behind running[i] (then running[i] itself) until `need`
        pages are available. True: room made; None: running[i] was preempted; False: no victim."""
        kv, running = self.kv, self.running
        seq = running[i]
        while kv.num_available < need:
            victim = next((s for s in reversed(running[i + 1 :]) if s.kind == GENERATE), None)
            if victim is None:
                if seq.kind != GENERATE:
                    return False
                victim = seq
            self._preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return None
        return True

    def _preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self._register_full_pages(seq)
        before = seq.prefill_remaining
        self.kv.release(seq.pages)
        seq.pages, seq.num_computed, seq.num_registered = [], 0, 0
        seq.matched, seq.status = False, WAITING
        self.queued_prefill_tokens += seq.prefill_remaining - before
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def _admit(self, out: ScheduleOutput, budget: int, now: float) -> None:
        kv, waiting, cfg = self.kv, self.waiting, self.config
        while waiting:
            seq = waiting[0]
            if seq.kind == RECEIVE:
                if len(self.running) + len(self.receiving) >= cfg.max_num_seqs or not self._admit_receive(seq, now):
                    return
                waiting.popleft()
                out.admitted_receives.append(seq)
                continue
            if budget <= 0 or len(self.running) + len(self.receiving) >= cfg.max_num_seqs:
                return
            hit = self._match_prefix(seq) if not seq.pages else []
            held = len(seq.pages) + len(hit)
            computed = held * self.page_size if hit else seq.num_computed
            n = min(seq.known_len - computed, budget)
            need = kv.pages_for(computed + n) - held
            room = kv.num_available - kv.count_unreferenced(hit) - need
            if room < self._reserve_for_running():
                if room < 0 and self._idle():
                    # Nothing will ever free pages: this sequence alone does not fit.
                    waiting.popleft()
                    self._fail(seq, f"needs {need} more KV pages, only {kv.num_available} can ever be free")
                    out.failed.append(seq)
                    continue
                seq.matched = False
                return
            waiting.popleft()
            if hit:
                kv.acquire(hit)
                seq.pages = hit
                seq.num_registered = len(hit)
                seq.num_cached = computed
                kv.hits += computed
                self._set_computed(seq, computed)
            if need > 0:
                seq.pages += kv.allocate(need)
            seq.status = RUNNING
            self.running.append(seq)
            self._add_to_batch(out.batch, seq, n)
            budget -= n

    def try_admit_receive(self, seq: Sequence, now: float) -> bool:
        """Admit a reservation at once if it heads the queue and fits (saves a scheduling round)."""
        if not self.waiting or self.waiting[0] is not seq or not self._admit_receive(seq, now):
            return False
        self.waiting.popleft()
        return True

    def _admit_receive(self, seq: Sequence, now: float) -> bool:
        kv = self.kv
        hit = self._match_prefix(seq) if not seq.pages else []
        need = kv.pages_for(seq.target) - len(hit)
        if kv.num_available - kv.count_unreferenced(hit) - need < self._reserve_for_running():
            seq.matched = False  # match again next time: the cache may change meanwhile
            return False
        matched = len(hit) * self.page_size
        kv.acquire(hit)
        seq.pages = hit + kv.allocate(need)
        seq.reserved = need
        kv.num_reserved += need
        seq.num_registered = len(hit)
        seq.num_cached = seq.num_computed = seq.begin = matched
        kv.hits += matched
        seq.status = RECEIVING
        seq.deadline = now + self.config.reservation_timeout_s
        self.receiving[seq.id] = seq
        return True

    def _idle(self) -> bool:
        """No admitted work that will ever give pages back."""
        return not (self.running or self.receiving or self.sending)

    def _reserve_for_running(self) -> int:
        """Pages new admissions must leave free: the watermark, unless nothing else runs."""
        return 0 if self._idle() else self._watermark_pages

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Cached pages for the sequence's prefix, capped so a generating sequence still computes
        at least one token (it must sample) and a send/receive never covers past its target."""
        if seq.matched:
            return []
        seq.matched = True
        keys = request_page_keys(seq.req, self.page_size)
        if seq.kind == GENERATE:
            cap = (seq.known_len - 1) // self.page_size
        else:
            cap = seq.target // self.page_size
        return self.kv.match(keys[:cap])

    def _add_to_batch(self, batch: Batch, seq: Sequence, n: int) -> None:
        start = seq.num_computed
        sample = seq.kind == GENERATE and start + n == seq.known_len
        batch.seqs.append(seq)
        batch.starts.append(start)
        batch.num_new.append(n)
        batch.sample.append(sample)
        f = batch.features
        if start >= seq.prompt_len and n == 1:
            f.decode_seqs += 1
            f.decode_context += start + 1
        else:
            f.prefill_tokens += n
            f.prefill_seqs += 1
            f.prefill_attn += n * (start + n / 2)
            f.prefill_context += start + n
        if sample:
            f.sampled += 1

    def update(self, batch: Batch, tokens: list[int] | None, now: float) -> StepResult:
        """Apply a finished step. `tokens` holds one id per sampling row (None: the simulator's 0)."""
        result = StepResult([], [], [])
        eos = self.config.eos_token_id
        t = 0
        for seq, start, n, sample in zip(batch.seqs, batch.starts, batch.num_new, batch.sample):
            if seq.status != RUNNING:  # released while the step ran
                t += sample
                continue
            before = seq.prefill_remaining
            seq.num_computed = start + n
            self.queued_prefill_tokens -= before - seq.prefill_remaining
            self._register_full_pages(seq)
            if seq.kind == SEND:
                result.sends.append((seq, start, start + n))
                if seq.num_computed >= seq.target:
                    self.running.remove(seq)
                    seq.status = SENT
                    self.sending[seq.id] = seq
                continue
            if not sample:
                continue
            token = tokens[t] if tokens is not None else 0
            t += 1
            seq.output.append(token)
            seq.token_times.append(now)
            result.sampled.append(seq)
            sp = seq.req.sampling
            if len(seq.output) >= sp.max_tokens:
                seq.finish_reason = "length"
            elif token in sp.stop_token_ids or (token == eos and not sp.ignore_eos):
                seq.finish_reason = "stop"
            else:
                continue
            self._finish(seq, FINISHED)
            result.finished.append(seq)
        return result

    # -- fast-forward (simulator) --------------------------------------------------------
    def decode_run_length(self, batch: Batch, out: ScheduleOutput) -> int:
        """How many identical pure-decode steps follow from this batch, if nothing outside
        interrupts: the batch holds every running sequence, each decodes one token, none can stop
        early (no stop tokens), and the pages all of them will need fit. Then the next steps differ
        only in context length, and the simulator may apply them in one go (`apply_decode_run`)
        instead of stepping each; 1 means step normally. Waiting sequences stay blocked meanwhile:
        they were not admitted now, and decoding only takes pages and budget away."""
        seqs = batch.seqs
        if (out.admitted_receives or out.preempted or len(seqs) != len(self.running)
                or batch.features.decode_seqs != len(seqs) or not seqs):
            return 1
        eos = self.config.eos_token_id
        k = min(s.req.sampling.max_tokens - len(s.output) for s in seqs)
        if k <= 1:
            return 1
        for s in seqs:
            sp = s.req.sampling
            if sp.stop_token_ids or (eos is not None and not sp.ignore_eos):
                return 1
        # The batch's own pages for step 1 are already allocated; steps 2..k need the rest.
        extra = sum(self.kv.pages_for(s.num_computed + k) - len(s.pages) for s in seqs)
        return k if extra <= self.kv.num_available else 1

    def apply_decode_run(self, batch: Batch, times: list[float]) -> StepResult:
        """Apply len(times) decode steps of `batch` at once (token id 0, as `update` with None)."""
        k = len(times)
        result = StepResult([], [], [])
        zeros = [0] * k
        for seq in batch.seqs:
            if seq.status != RUNNING:
                continue
            need = self.kv.pages_for(seq.num_computed + k) - len(seq.pages)
            if need > 0:
                seq.pages += self.kv.allocate(need)
            seq.num_computed += k
            seq.output += zeros
            seq.token_times += times
            result.sampled.append(seq)
            if len(seq.output) >= seq.req.sampling.max_tokens:
                seq.finish_reason = "length"
                self._finish(seq, FINISHED)
                result.finished.append(seq)
        return result

    # -- completions and releases ---------------------------------------------------------
    def complete_receive(self, req_id: str, now: float) -> Sequence:
        """All reserved pages landed: the KV of [0, target) is here and joins the prefix cache.
        The reservation now waits for start_generate (or release) until its deadline."""
        seq = self.receiving.get(req_id)
        if seq is None:
            raise KeyError(f"no open reservation for request {req_id} (expired or released)")
        seq.num_computed = seq.target
        self._register_full_pages(seq)
        self._unreserve(seq)
        seq.deadline = now + self.config.reservation_timeout_s
        return seq

    def touch_receive(self, req_id: str, now: float) -> bool:
        """A chunk landed: push the reservation's deadline out. False if it is gone."""
        seq = self.receiving.get(req_id)
        if seq is None:
            return False
        seq.deadline = now + self.config.reservation_timeout_s
        return True

    def _unreserve(self, seq: Sequence) -> None:
        self.kv.num_reserved -= seq.reserved
        seq.reserved = 0

    def finish_send(self, req_id: str) -> None:
        """Its pages have been shipped (or the transfer failed): release them."""
        seq = self._send.get(req_id)
        if seq is not None:
            self._finish(seq, FINISHED)

    def release(self, req_id: str, status: str = ABORTED) -> list[Sequence]:
        """Drop whatever this engine holds for the request; computed full pages stay cached."""
        dropped = [s for s in (self._gen.get(req_id), self._send.get(req_id)) if s is not None]
        for seq in dropped:
            seq.finish_reason = seq.finish_reason or "abort"
            self._finish(seq, status)
        return dropped

    def expire(self, now: float) -> list[Sequence]:
        """Reclaim reservations whose deadline passed without a start_generate."""
        late = [s for s in self.receiving.values() if s.deadline <= now]
        for seq in late:
            self._finish(seq, ABORTED)
            seq.finish_reason = "reservation expired"
        return late

    def _fail(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self._finish(seq, FAILED)

    def _finish(self, seq: Sequence, status: str) -> None:
        if seq.status in (FINISHED, FAILED, ABORTED):
            return
        if seq.status in (WAITING, RUNNING) and seq.kind != RECEIVE:
            self.queued_prefill_tokens -= seq.prefill_remaining
        if seq.status == RUNNING:
            self.running.remove(seq)
        elif seq.status == WAITING:
            self.waiting.remove(seq)
        elif seq.status == RECEIVING:
            self.receiving.pop(seq.id, None)
            self._unreserve(seq)
        elif seq.status == SENT:
            self.sending.pop(seq.id, None)
        if status == FINISHED:
            self._register_full_pages(seq)
        self.kv.release(seq.pages)
        seq.pages = []
        seq.status = status
        owner = self._send if seq.kind == SEND else self._gen
        if owner.get(seq.id) is seq:
            del owner[seq.id]

    def _register_full_pages(self, seq: Sequence) -> None:
        """Publish computed full prompt pages under their prefix keys."""
        full = min(seq.num_computed, seq.target, seq.prompt_len) // self.page_size
        if full > seq.num_registered:
            keys = request_page_keys(seq.req, self.page_size)
            first = seq.num_registered
            self.kv.register_all(seq.pages[first:full], keys[first:full])
            seq.num_registered = full

    def _set_computed(self, seq: Sequence, value: int) -> None:
        before = seq.prefill_remaining
        seq.num_computed = value
        self.queued_prefill_tokens -= before - seq.prefill_remaining

    # -- views ----------------------------------------------------------------------------
    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def cached_prefix_len(self, req: Request) -> int:
        return len(self.kv.match(request_page_keys(req, self.page_size))) * self.page_size

    def load(self, engine_id: str) -> EngineLoad:
        kv = self.kv
        return EngineLoad(
            engine_id, len(self.waiting), len(self.running), len(self.receiving),
            self.queued_prefill_tokens, kv.num_free, kv.num_cached, kv.num_pages, self.page_size,
        )
