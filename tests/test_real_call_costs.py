"""The engine loop counts the messages it handles and the thread CPU each op took, outside any step
(calibration reads what a start_generate costs from it), and its steps by the tokens each computed;
what a peer sends cannot grow the table."""
import numpy as np
import pytest

from real import protocol as p
from real.engine_stats import MALFORMED, CallCosts, stats_between
from tests.inproc_engine import InProcEngine


def test_call_costs_add_up_per_op():
    costs = CallCosts()
    for op, s in (("ping", 1e-4), ("start_generate", 2e-4), ("ping", 3e-4)):
        costs.add(op, s)
    assert costs.as_dict() == {"ping": [2, pytest.approx(4e-4)], "start_generate": [1, 2e-4]}


def test_the_engine_counts_each_call_by_op_and_a_garbled_one_under_malformed():
    engine = InProcEngine()
    try:
        before = engine.worker.stats()
        prompt = np.arange(8, dtype="<i4").tobytes()
        for i in range(3):
            engine.send(p.StartGenerate(op="start_generate", id=0, req=p.WireRequest(
                id=f"r{i}", prompt=prompt, sampling=p.WireSampling(max_tokens=2, ignore_eos=True))))
        engine.client.send_multipart([b"\x92not a map"])
        engine.client.send_multipart([p.encode(p.Ping(op="ping", id=0)).replace(b"ping", b"pong")])
        ended = lambda out: sum(len(getattr(a, "finished", [])) for a in out) >= 3
        assert ended(engine.answers(until=ended, wait_s=20))
        own = stats_between(before, engine.worker.stats())
        calls = own["calls"]
    finally:
        engine.close()
    assert calls["start_generate"][0] == 3 and calls["start_generate"][1] > 0
    # Every step is counted under the tokens it computed (what a profile's token curve prices).
    by_tokens, features = own["steps_by_tokens"], own["step_features"]
    assert sum(by_tokens.values()) == own["steps"] > 0
    assert sum(int(t) * n for t, n in by_tokens.items()) == features["prefill_tokens"] + features["decode_seqs"]
    assert calls[MALFORMED][0] == 2  # an unknown op is malformed: no key of a peer's choosing
    assert set(calls) <= {"start_generate", MALFORMED, "stats"}
