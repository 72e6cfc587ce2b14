"""Continuous batching with chunked prefill, shared by the simulated and the real engine.

One `schedule()` picks the next step's work, the backend executes it (a cost model's duration
or a real forward pass), and `update()` applies the sampled tokens. Both backends therefore make
the same decisions by construction; only the clock differs.

Policy (close to vLLM's v1 scheduler):
1. Running sequences first, in admission order: decodes take one token, unfinished prefills the
   rest of the token budget (chunked prefill). A sequence that needs a page when none is left
   preempts the most recently admitted generating sequence (recompute: its pages are released,
   computed prompt pages stay in the prefix cache, and it goes back to the head of the queue).
2. Then reservations for incoming KV (prep_recv), first come first served in their own queue:
   they need no compute, all their pages are allocated at once, and together they may hold at
   most `reservation_share` of the pages. A reservation over that share waits (backpressure)
   instead of pinning pages, and never blocks other work behind it.
3. Then waiting sequences, first come first served, while the token budget, `max_num_seqs` and
   free pages (above a small watermark, so admissions do not thrash running work) allow. A send
   (remote_send) is admitted only with pages for its whole range, so it never stalls half-computed
   holding pages; generating sequences take pages as they grow and are preempted when needed.

Why this cannot deadlock, whatever the strategy: reservations are completed by other engines'
sends; a send needs pages only from the share reservations cannot take, gets all of them at
admission and then always finishes; generating sequences finish or are preempted. So every
admitted send completes, which completes reservations, whose sequences then generate and finish.
"""
from __future__ import annotations

from enum import Enum

from core_api import fast_forward
from core_api.batch import Batch, ScheduleOutput, StepResult
from core_api.engine import EngineLoad
from core_api.hashing import request_page_keys
from core_api.kv_cache import BlockManager
from core_api.scheduler_config import RequestRejected, SchedulerConfig
from core_api.scheduler_state import SchedulerState
from core_api.sequence import ABORTED, FINISHED, GENERATE, RECEIVE, RECEIVING, RUNNING, SEND, Sequence, Status
from core_api.types import Request

__all__ = ["Batch", "RequestRejected", "ScheduleOutput", "Scheduler", "SchedulerConfig", "StepResult"]


class Room(Enum):
    """What making room for a running sequence's next pages came to."""

    MADE = "made"  # enough pages are available now
    SELF_PREEMPTED = "self_preempted"  # the sequence itself was preempted to make it
    NO_VICTIM = "no_victim"  # nothing could be preempted (the sequence is a send or a reservation)


class Scheduler:
    """The policy over a SchedulerState (`state`), which owns the sequences and counters and
    carries each decision out; the queues are readable here as views."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config
        self.page_size = config.page_size
        self.state = SchedulerState(BlockManager(config.num_pages, config.page_size), config.reservation_timeout_s,
                                    config.policy.prefix_caching)
        self.policy = config.policy
        self._watermark_pages = int(config.policy.watermark * config.num_pages)
        share = config.policy.reservation_share
        self._receive_cap = int(share * config.num_pages)  # pages reservations may hold
        self._receive_slots = int(share * config.max_num_seqs)  # of max_num_seqs, likewise
        # Read-only views of the state's containers (the same objects: the state never replaces them).
        state = self.state
        self.kv, self.waiting, self.receive_queue = state.kv, state.waiting, state.receive_queue
        self.running, self.receiving, self.sending = state.running, state.receiving, state.sending

    # -- views of the state's counters ----------------------------------------------------------
    queued_prefill_tokens = property(lambda self: self.state.queued_prefill_tokens)
    reserved_pages = property(lambda self: self.state.reserved_pages)
    num_preemptions = property(lambda self: self.state.num_preemptions)
    holds_sequences = property(lambda self: self.state.holds_sequences)

    def sequences(self) -> list[Sequence]:
        return self.state.sequences()

    def sequences_of(self, req_id: str) -> list[Sequence]:
        return self.state.sequences_of(req_id)

    def check_consistent(self) -> None:
        self.state.check_consistent()

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
        seq = self.state.generating(req.id)
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
            self.state.generate_reserved(seq)
            return seq
        seq = Sequence(req, GENERATE, target=req.prompt_len)
        self.state.queue(seq)
        return seq

    def add_send(self, req: Request, begin: int, end: int | None) -> Sequence:
        """remote_send: compute KV of prompt[:end] and ship [begin, end); never samples.
        The sequence comes back already SENT when the prefix cache holds the whole range: a
        send that needs no compute skips the queue (a context migration off a busy engine must
        not wait behind that engine's prefills), and the backend ships its pages at once."""
        end = req.resolve(end)
        if not 0 <= begin <= end:
            raise ValueError(f"request {req.id}: remote_send range [{begin}, {end}) is empty or reversed")
        if self.state.is_sending(req.id):
            raise ValueError(f"request {req.id} is already sending from this engine")
        self._check_fits(req, end)
        own = self.config.num_pages - self._receive_cap
        if self.kv.pages_for(end) > own:
            raise RequestRejected(f"request {req.id}: remote_send of {end} tokens needs {self.kv.pages_for(end)} KV "
                                  f"pages, more than the {own} this engine keeps for its own work")
        seq = Sequence(req, SEND, target=end, begin=begin)
        if end % self.page_size == 0:
            hit = self._match_prefix(seq)
            if len(hit) * self.page_size >= seq.target:
                self.state.send_cached(seq, hit)
                return seq
            seq.matched = False
        self.state.queue(seq)
        return seq

    def add_receive(self, req: Request, end: int | None) -> Sequence:
        """prep_recv: queue a reservation for prompt[matched:end]; admitted by schedule()."""
        end = req.resolve(end)
        if self.state.generating(req.id) is not None:
            raise ValueError(f"request {req.id} already has a sequence on this engine")
        self._check_fits(req, req.prompt_len + req.sampling.max_tokens)
        if not self._receive_slots:
            raise RequestRejected(f"request {req.id}: prep_recv on an engine whose max_num_seqs "
                                  f"({self.config.max_num_seqs}) leaves no slot for reservations")
        if self.kv.pages_for(end) > self._receive_cap:
            raise RequestRejected(f"request {req.id}: prep_recv of {end} tokens needs {self.kv.pages_for(end)} KV pages, "
                                  f"more than reservations may hold on this engine ({self._receive_cap})")
        seq = Sequence(req, RECEIVE, target=end)
        self.state.queue(seq)
        return seq

    # -- the step -------------------------------------------------------------------------
    def schedule(self, now: float = 0.0) -> ScheduleOutput:
        out = ScheduleOutput(Batch(), [], [], [])
        budget = self.config.max_num_batched_tokens
        state = self.state
        batch, running, pages_for = out.batch, state.running, state.kv.pages_for
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            n = min(seq.known_len - seq.num_computed, budget)
            need = pages_for(seq.num_computed + n) - len(seq.pages)
            if need > 0:
                room = self._make_room(need, i, out)
                if room is Room.SELF_PREEMPTED:  # running[i] is now the next sequence
                    continue
                if room is Room.NO_VICTIM:  # it waits for a step that frees pages
                    i += 1
                    continue
                state.grow(seq, need)
            batch.add(seq, n)
            budget -= n
            i += 1
        if self.policy.admit_after_preemption or not out.preempted:
            self._admit(out, budget, now)
        return out

    def _make_room(self, need: int, i: int, out: ScheduleOutput) -> Room:
        """Preempt generating sequences behind running[i] (then running[i] itself) until `need`
        pages are available."""
        kv, running = self.kv, self.running
        seq = running[i]
        while kv.num_available < need:
            victim = next((s for s in reversed(running[i + 1 :]) if s.kind == GENERATE), None)
            if victim is None:
                if seq.kind != GENERATE:
                    return Room.NO_VICTIM
                victim = seq
            self.state.preempt(victim)
            out.preempted.append(victim)
            if victim is seq:
                return Room.SELF_PREEMPTED
        return Room.MADE

    def _admit(self, out: ScheduleOutput, budget: int, now: float) -> None:
        state, cfg = self.state, self.config
        kv, waiting, receives = state.kv, state.waiting, state.receive_queue
        while receives:
            plan = self._fit_reservation(receives[0])
            if plan is None:
                break
            out.admitted_receives.append(self.state.admit_reservation(*plan, now))
        while waiting:
            seq = waiting[0]
            if budget <= 0 or len(state.running) + len(state.receiving) >= cfg.max_num_seqs:
                return
            hit = self._match_prefix(seq) if not seq.pages else []
            held = len(seq.pages) + len(hit)
            computed = held * self.page_size if hit else seq.num_computed
            n = min(seq.known_len - computed, budget)
            if seq.kind == SEND:  # all its pages now: a send never stalls half-computed (see above)
                need = must_fit = kv.pages_for(seq.target) - held
            else:
                need = kv.pages_for(computed + n) - held
                must_fit = kv.pages_for(seq.known_len) - held if self.policy.admit_whole_sequence else need
            room = kv.num_available - kv.count_unreferenced(hit) - must_fit
            if room < self._reserve_for_running():
                if room < 0 and self.state.idle():
                    # Nothing will ever free pages: this sequence alone does not fit.
                    waiting.popleft()
                    self.state.fail(seq, f"needs {need} more KV pages, only {kv.num_available} can ever be free")
                    out.failed.append(seq)
                    continue
                seq.matched = False
                return
            self.state.admit_waiting(hit, computed, need)
            out.batch.add(seq, n)
            budget -= n

    def try_admit_receive(self, seq: Sequence, now: float) -> bool:
        """Admit a reservation at once if it heads its queue and fits (saves a scheduling round)."""
        receives = self.receive_queue
        plan = self._fit_reservation(seq) if receives and receives[0] is seq else None
        if plan is None:
            return False
        self.state.admit_reservation(*plan, now)
        return True

    def _fit_reservation(self, seq: Sequence) -> tuple[list[int], int] | None:
        """(cached pages it reuses, pages it needs) if the reservation heading its queue fits now."""
        state = self.state
        kv, receiving = state.kv, state.receiving
        if len(receiving) >= self._receive_slots or len(state.running) + len(receiving) >= self.config.max_num_seqs:
            return None
        hit = self._match_prefix(seq) if not seq.pages else []
        need = kv.pages_for(seq.target) - len(hit)
        over_share = state.reserved_pages + len(hit) + need > self._receive_cap
        if over_share or kv.num_available - kv.count_unreferenced(hit) - need < self._reserve_for_running():
            seq.matched = False  # match again next time: the cache may change meanwhile
            return None
        return hit, need

    def _reserve_for_running(self) -> int:
        """Pages new admissions must leave free: the watermark, unless nothing else runs."""
        return 0 if self.state.idle() else self._watermark_pages

    def _match_prefix(self, seq: Sequence) -> list[int]:
        """Cached pages for the sequence's prefix, capped so a generating sequence still computes
        at least one token (it must sample) and a send/receive never covers past its target."""
        if seq.matched or not self.policy.prefix_caching:
            return []
        seq.matched = True
        if seq.kind == GENERATE:
            cap = (seq.known_len - 1) // self.page_size
        else:
            cap = seq.target // self.page_size
        return self.kv.match(request_page_keys(seq.req, self.page_size), cap)

    def update(self, batch: Batch, tokens: list[int] | None, now: float) -> StepResult:
        """Apply a finished step. `tokens` holds one id per sampling row (None: the simulator's 0)."""
        result = StepResult([], [], [])
        eos = self.config.eos_token_id
        state = self.state
        t = 0
        for seq, start, n, sample in zip(batch.seqs, batch.starts, batch.num_new, batch.sample):
            if seq.status != RUNNING:  # released while the step ran
                t += sample
                continue
            if start < seq.prompt_len:  # a prefill row: fewer prompt tokens queued, maybe full pages to publish
                state.set_computed(seq, start + n)
                state.register_full_pages(seq)
            else:  # a decode row changes neither (as in fast_forward.apply_decode_run)
                seq.num_computed = start + n
            if seq.kind == SEND:
                result.sends.append((seq, start, start + n))
                if seq.num_computed >= seq.target:
                    state.computed_send(seq)
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
            state.finish(seq, FINISHED)
            result.finished.append(seq)
        return result

    def decode_run_length(self, batch: Batch, out: ScheduleOutput) -> int:
        return fast_forward.decode_run_length(self.state, self.config.eos_token_id, batch, out)

    def apply_decode_run(self, batch: Batch, times: list[float]) -> StepResult:
        return fast_forward.apply_decode_run(self.state, batch, times)

    # -- how sequences end (SchedulerState.finish does the work) --------------------------------
    def complete_receive(self, req_id: str, now: float) -> Sequence:
        return self.state.complete_receive(req_id, now)

    def touch_receive(self, req_id: str, now: float) -> bool:
        return self.state.touch_receive(req_id, now)

    def finish_send(self, req_id: str) -> None:
        self.state.finish_send(req_id)

    def release(self, req_id: str, status: Status = ABORTED) -> list[Sequence]:
        return self.state.release(req_id, status)

    def expire(self, now: float) -> list[Sequence]:
        return self.state.expire(now)

    # -- views ----------------------------------------------------------------------------
    def cached_prefix_len(self, req: Request) -> int:
        if not self.policy.prefix_caching:
            return 0
        return len(self.kv.match(request_page_keys(req, self.page_size))) * self.page_size

    def load(self, engine_id: str) -> EngineLoad:
        state = self.state
        kv = state.kv
        return EngineLoad(
            engine_id, len(state.waiting) + len(state.receive_queue), len(state.running), len(state.receiving),
            state.queued_prefill_tokens, kv.num_free, kv.num_cached, kv.num_pages, self.page_size,
        )
