"""How sequences end on an engine: landed reservations, shipped sends, releases, expiry.

A mixin of Scheduler. Every path that ends a sequence goes through `_finish`, which takes it
out of whichever queue holds it, settles the reservation count, publishes its computed full
prompt pages to the prefix cache and releases its pages: one place that keeps "every page has
one owner" true.
"""
from __future__ import annotations

from core_api.hashing import request_page_keys
from core_api.sequence import (
    ABORTED,
    FAILED,
    FINISHED,
    RECEIVE,
    RECEIVING,
    RUNNING,
    SEND,
    SENT,
    WAITING,
    Sequence,
    Status,
)


class SequenceEndings:
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
        self.kv.unreserve(seq.reserved)
        seq.reserved = 0

    def finish_send(self, req_id: str) -> None:
        """Its pages have been shipped (or the transfer failed): release them."""
        seq = self._send.get(req_id)
        if seq is not None:
            self._finish(seq, FINISHED)

    def release(self, req_id: str, status: Status = ABORTED) -> list[Sequence]:
        """Drop whatever this engine holds for the request; computed full pages stay cached."""
        dropped = self.sequences_of(req_id)
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

    def _finish(self, seq: Sequence, status: Status) -> None:
        if seq.status in (FINISHED, FAILED, ABORTED):
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
        """The one place a sequence's computed length changes, keeping queued_prefill_tokens."""
        before = seq.prefill_remaining
        seq.num_computed = value
        self.queued_prefill_tokens -= before - seq.prefill_remaining
