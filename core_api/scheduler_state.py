"""What an engine holds, with one owner: every sequence in exactly one queue or set, the indexes by
request id, and the counters derived from them.

The Scheduler decides (what to admit, what to run, what to preempt); this class carries the
decisions out. Each state change is one method that moves the sequence, keeps the counters
(`queued_prefill_tokens`, `reserved_pages`) and the block manager's references in step, so no
caller can change one and forget the other; `check_consistent()` states the invariants they keep
(tests/test_scheduler_state_machine.py drives random calls through them). Every path that ends a
sequence goes through `finish`, which takes it out of whichever set holds it, settles its
reservation, publishes its computed full prompt pages to the prefix cache and releases its pages:
one place that keeps "every page has one owner" true.
"""
from __future__ import annotations

from collections import deque

from core_api.hashing import request_page_keys
from core_api.kv_cache import BlockManager
from core_api.sequence import (
    ABORTED,
    FAILED,
    FINISHED,
    GENERATE,
    RECEIVE,
    RECEIVING,
    RUNNING,
    SEND,
    SENT,
    WAITING,
    Sequence,
    Status,
)

ENDED = (FINISHED, FAILED, ABORTED)


class SchedulerState:
    def __init__(self, kv: BlockManager, reservation_timeout_s: float, prefix_caching: bool = True) -> None:
        self.kv = kv
        self.prefix_caching = prefix_caching  # off: computed pages are never published, so they free at once
        self.page_size = kv.page_size
        self.reservation_timeout_s = reservation_timeout_s
        self.waiting: deque[Sequence] = deque()  # generating and sending sequences not admitted yet
        self.receive_queue: deque[Sequence] = deque()  # reservations (prep_recv) not admitted yet
        self.running: list[Sequence] = []
        self.receiving: dict[str, Sequence] = {}  # admitted reservations, by request id
        self.sending: dict[str, Sequence] = {}  # computed SEND sequences whose pages are in flight
        self._gen: dict[str, Sequence] = {}  # GENERATE or RECEIVE sequence of each request id
        self._send: dict[str, Sequence] = {}  # SEND sequence of each request id
        self.reserved_pages = 0  # pages held by admitted reservations (until start_generate, release or expiry)
        self.queued_prefill_tokens = 0  # prompt tokens of waiting and running sequences not computed yet
        self.num_preemptions = 0

    # -- new sequences ------------------------------------------------------------------------
    def queue(self, seq: Sequence) -> None:
        """A new sequence joins the back of its queue (reservations have their own)."""
        if seq.kind == SEND:
            self._send[seq.id] = seq
        else:
            self._gen[seq.id] = seq
        if seq.kind == RECEIVE:
            self.receive_queue.append(seq)
        else:
            self.waiting.append(seq)
            self.queued_prefill_tokens += seq.prefill_remaining

    def send_cached(self, seq: Sequence, hit: list[int]) -> None:
        """A new send whose whole range the prefix cache holds: SENT at once, no compute."""
        self._send[seq.id] = seq
        self._take_hit(seq, hit, seq.target)
        seq.num_computed = seq.target
        seq.status = SENT
        self.sending[seq.id] = seq

    # -- admission ----------------------------------------------------------------------------
    def admit_waiting(self, hit: list[int], computed: int, need: int) -> Sequence:
        """The head of the waiting queue runs: cached pages `hit` serve its first `computed` tokens,
        `need` more pages are allocated."""
        seq = self.waiting.popleft()
        if hit:
            self._take_hit(seq, hit, computed)
            self.set_computed(seq, computed)
        if need > 0:
            self.grow(seq, need)
        seq.status = RUNNING
        self.running.append(seq)
        return seq

    def admit_reservation(self, hit: list[int], need: int, now: float) -> Sequence:
        """The head of the reservation queue gets its pages: cached `hit` plus `need` reserved ones
        that other engines will fill."""
        seq = self.receive_queue.popleft()
        matched = len(hit) * self.page_size
        self._take_hit(seq, hit, matched)
        seq.num_computed = seq.begin = matched
        seq.pages = hit + self.kv.allocate(need)
        seq.reserved = need
        self.kv.reserve(need)
        seq.status = RECEIVING
        seq.deadline = now + self.reservation_timeout_s
        self.receiving[seq.id] = seq
        self.reserved_pages += len(seq.pages)
        return seq

    def _take_hit(self, seq: Sequence, hit: list[int], tokens: int) -> None:
        self.kv.acquire(hit)
        seq.pages = hit
        seq.num_registered = len(hit)
        seq.num_cached = tokens
        self.kv.count_hit(tokens)

    def generate_reserved(self, seq: Sequence) -> None:
        """start_generate on a landed reservation: it already holds its pages, so it joins the
        running set directly (a reservation queued behind it can never block what frees memory)."""
        self.receiving.pop(seq.id, None)
        self._unreserve(seq)
        self.reserved_pages -= len(seq.pages)
        seq.kind, seq.target, seq.status = GENERATE, seq.req.prompt_len, RUNNING
        seq.deadline = float("inf")
        self.running.append(seq)
        self.queued_prefill_tokens += seq.prefill_remaining

    # -- running ------------------------------------------------------------------------------
    def grow(self, seq: Sequence, pages: int) -> None:
        seq.pages += self.kv.allocate(pages)

    def set_computed(self, seq: Sequence, value: int) -> None:
        """The one place a sequence's computed length changes, keeping queued_prefill_tokens."""
        before = seq.prefill_remaining
        seq.num_computed = value
        self.queued_prefill_tokens -= before - seq.prefill_remaining

    def computed_send(self, seq: Sequence) -> None:
        """A send computed its whole range: it leaves the running set while its pages ship."""
        self.running.remove(seq)
        seq.status = SENT
        self.sending[seq.id] = seq

    def preempt(self, seq: Sequence) -> None:
        """Recompute later: its pages go (computed prompt pages stay cached), it heads the queue."""
        self.running.remove(seq)
        self.register_full_pages(seq)
        self.kv.release(seq.pages)
        self.set_computed(seq, 0)
        seq.pages, seq.num_registered = [], 0
        seq.matched, seq.status = False, WAITING
        self.waiting.appendleft(seq)
        self.num_preemptions += 1

    def register_full_pages(self, seq: Sequence) -> None:
        """Publish computed full prompt pages under their prefix keys."""
        full = min(seq.num_computed, seq.target, seq.prompt_len) // self.page_size
        if full > seq.num_registered and self.prefix_caching:
            first = seq.num_registered
            self.kv.register(seq.pages[first:full], request_page_keys(seq.req, self.page_size), first)
            seq.num_registered = full

    # -- reservations landing ------------------------------------------------------------------
    def complete_receive(self, req_id: str, now: float) -> Sequence:
        """All reserved pages landed: the KV of [0, target) is here and joins the prefix cache.
        The reservation now waits for start_generate (or release) until its deadline."""
        seq = self.receiving.get(req_id)
        if seq is None:
            raise KeyError(f"no open reservation for request {req_id} (expired or released)")
        seq.num_computed = seq.target
        self.register_full_pages(seq)
        self._unreserve(seq)
        seq.deadline = now + self.reservation_timeout_s
        return seq

    def touch_receive(self, req_id: str, now: float) -> bool:
        """A chunk landed: push the reservation's deadline out. False if it is gone."""
        seq = self.receiving.get(req_id)
        if seq is None:
            return False
        seq.deadline = now + self.reservation_timeout_s
        return True

    def _unreserve(self, seq: Sequence) -> None:
        self.kv.unreserve(seq.reserved)
        seq.reserved = 0

    # -- endings ------------------------------------------------------------------------------
    def finish_send(self, req_id: str) -> None:
        """Its pages have been shipped (or the transfer failed): release them."""
        seq = self._send.get(req_id)
        if seq is not None:
            self.finish(seq, FINISHED)

    def release(self, req_id: str, status: Status = ABORTED) -> list[Sequence]:
        """Drop whatever this engine holds for the request; computed full pages stay cached."""
        dropped = self.sequences_of(req_id)
        for seq in dropped:
            seq.finish_reason = seq.finish_reason or "abort"
            self.finish(seq, status)
        return dropped

    def expire(self, now: float) -> list[Sequence]:
        """Reclaim reservations whose deadline passed without a start_generate."""
        late = [s for s in self.receiving.values() if s.deadline <= now]
        for seq in late:
            self.finish(seq, ABORTED)
            seq.finish_reason = "reservation expired"
        return late

    def fail(self, seq: Sequence, reason: str) -> None:
        seq.finish_reason = reason
        self.finish(seq, FAILED)

    def finish(self, seq: Sequence, status: Status) -> None:
        if seq.status in ENDED:
            return
        if seq.status in (WAITING, RUNNING) and seq.kind != RECEIVE:
            self.queued_prefill_tokens -= seq.prefill_remaining
        if seq.status == RUNNING:
            self.running.remove(seq)
        elif seq.status == WAITING:
            (self.receive_queue if seq.kind == RECEIVE else self.waiting).remove(seq)
        elif seq.status == RECEIVING:
            self.receiving.pop(seq.id, None)
            self._unreserve(seq)
            self.reserved_pages -= len(seq.pages)
        elif seq.status == SENT:
            self.sending.pop(seq.id, None)
        if status == FINISHED:
            self.register_full_pages(seq)
        self.kv.release(seq.pages)
        seq.pages = []
        seq.status = status
        owner = self._send if seq.kind == SEND else self._gen
        if owner.get(seq.id) is seq:
            del owner[seq.id]

    # -- views --------------------------------------------------------------------------------
    def generating(self, req_id: str) -> Sequence | None:
        """The GENERATE or RECEIVE sequence of a request."""
        return self._gen.get(req_id)

    def is_sending(self, req_id: str) -> bool:
        return req_id in self._send

    def sequences(self) -> list[Sequence]:
        """Every sequence this engine holds, in whatever state."""
        return [*self.running, *self.waiting, *self.receive_queue, *self.receiving.values(), *self.sending.values()]

    def sequences_of(self, req_id: str) -> list[Sequence]:
        """What this engine holds for one request: its generating/receiving and its sending sequence."""
        return [s for s in (self._gen.get(req_id), self._send.get(req_id)) if s is not None]

    @property
    def holds_sequences(self) -> bool:
        """Anything at all for any request: queued, running, reserved or sending."""
        return bool(self.running or self.waiting or self.receive_queue or self.receiving or self.sending)

    def idle(self) -> bool:
        """No admitted work that will ever give pages back."""
        return not (self.running or self.receiving or self.sending)

    def check_consistent(self) -> None:
        """Raise AssertionError (KVLeakError from the block manager) unless every queue, index and
        counter agrees with the sequences."""
        for queue, status in ((self.waiting, WAITING), (self.receive_queue, WAITING), (self.running, RUNNING),
                              (self.receiving.values(), RECEIVING), (self.sending.values(), SENT)):
            for seq in queue:
                assert seq.status == status, f"{seq.id} is {seq.status} in the {status} set"
        held = self.sequences()
        assert len({id(s) for s in held}) == len(held), "a sequence sits in two sets"
        assert {s.id: s for s in held if s.kind != SEND} == self._gen, "the request index disagrees with the sets"
        assert {s.id: s for s in held if s.kind == SEND} == self._send, "the send index disagrees"
        queued = sum(s.prefill_remaining for s in (*self.waiting, *self.running) if s.kind != RECEIVE)
        assert queued == self.queued_prefill_tokens, f"queued prefill {self.queued_prefill_tokens} != {queued}"
        assert self.reserved_pages == sum(len(s.pages) for s in self.receiving.values())
        assert self.kv.num_reserved == sum(s.reserved for s in self.receiving.values())
        refs = [0] * self.kv.num_pages
        for seq in held:
            for page in seq.pages:
                refs[page] += 1
        assert refs == self.kv._ref, "page references disagree with the sequences' page lists"
        self.kv.check_consistent()
