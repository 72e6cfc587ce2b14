"""The shared scheduler under random sequences of every call a backend makes (generate, send,
reserve, admit, step, fill, finish a send, release, expire), with its invariants checked after each:
queues, indexes, page references, queued prefill tokens and reserved pages always agree, and once
everything is released no page is left used or reserved."""
from __future__ import annotations

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core_api.errors import RequestRejected
from core_api.scheduler import Scheduler, SchedulerConfig
from core_api.types import Request, SamplingParams

PAGE = 4
PREFIXES = [np.arange(1, 13, dtype=np.int32), np.arange(50, 70, dtype=np.int32)]  # shared prompt starts


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.s = Scheduler(SchedulerConfig(num_pages=40, page_size=PAGE, max_num_batched_tokens=24, max_num_seqs=6,
                                           max_model_len=80, reservation_timeout_s=3.0))
        self.now, self.n = 0.0, 0

    def _request(self, length: int, prefix: int, max_tokens: int) -> Request:
        self.n += 1
        tail = np.random.default_rng(self.n).integers(100, 200, length, dtype=np.int32)
        prompt = np.concatenate([PREFIXES[prefix], tail]) if prefix < len(PREFIXES) else tail
        return Request(f"r{self.n}", prompt, SamplingParams(max_tokens=max_tokens))

    def _ids(self) -> list[str]:
        return sorted({s.id for s in self.s.sequences()})

    @rule(length=st.integers(1, 40), prefix=st.integers(0, 2), max_tokens=st.integers(1, 12))
    def generate(self, length, prefix, max_tokens):
        try:
            self.s.add_generate(self._request(length, prefix, max_tokens))
        except RequestRejected:
            pass

    @rule(length=st.integers(1, 40), prefix=st.integers(0, 2))
    def send(self, length, prefix):
        try:
            self.s.add_send(self._request(length, prefix, 1), 0, -1)
        except RequestRejected:
            pass

    @rule(length=st.integers(1, 40), prefix=st.integers(0, 2))
    def reserve(self, length, prefix):
        try:
            seq = self.s.add_receive(self._request(length, prefix, 4), -1)
        except RequestRejected:
            return
        self.s.try_admit_receive(seq, self.now)

    @rule()
    def step(self):
        out = self.s.schedule(self.now)
        self.now += 0.5
        self.s.update(out.batch, None, self.now)

    @precondition(lambda self: self.s.receiving)
    @rule(data=st.data(), generate=st.booleans())
    def fill_reservation(self, data, generate):
        req_id = data.draw(st.sampled_from(sorted(self.s.receiving)))
        seq = self.s.receiving[req_id]
        self.s.complete_receive(req_id, self.now)
        if generate:
            self.s.add_generate(seq.req, seq.target)

    @precondition(lambda self: self.s.sending)
    @rule(data=st.data())
    def finish_send(self, data):
        self.s.finish_send(data.draw(st.sampled_from(sorted(self.s.sending))))

    @precondition(lambda self: self.s.holds_sequences)
    @rule(data=st.data())
    def release(self, data):
        self.s.release(data.draw(st.sampled_from(self._ids())))

    @rule(seconds=st.floats(0, 5))
    def expire(self, seconds):
        self.now += seconds
        self.s.expire(self.now)

    @invariant()
    def consistent(self):
        self.s.check_consistent()

    def teardown(self):
        for req_id in self._ids():
            self.s.release(req_id)
        self.s.check_consistent()
        self.s.kv.check_no_leaks()


SchedulerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_scheduler_state_machine = SchedulerMachine.TestCase
