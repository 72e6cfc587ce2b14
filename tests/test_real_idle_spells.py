"""The engine loop records how long it sat idle before each step that ended an idle spell, in
bounded log-spaced bins (calibration prices those steps with a profile's idle cost)."""
import threading
import time

import numpy as np
import pytest

from real import protocol as p
from real.engine_stats import IdleSpells
from tests.inproc_engine import InProcEngine


def test_idle_spells_keep_counts_and_sums_in_log_spaced_bins():
    spells = IdleSpells()
    for s in (0.0011, 0.0012, 0.05, 0.051, 2.0, 0.0):
        spells.add(s)
    # four bins a decade: 1.1 and 1.2 ms share one, 50 and 51 ms another; a zero spell its own
    assert [[n, total] for _, n, total in spells.as_list()] == [
        [1, 0.0], [2, pytest.approx(0.0023)], [2, pytest.approx(0.101)], [1, 2.0]]
    assert [b for b, _, _ in spells.as_list()] == [-36, -12, -6, 1]  # floor(4 * log10(seconds))


def test_the_serving_loop_records_the_spell_a_request_ended():
    engine = InProcEngine()
    worker = engine.worker
    loop = threading.Thread(target=worker.serve, daemon=True)
    loop.start()
    try:
        time.sleep(0.05)  # the loop finds nothing to run and waits
        prompt = np.arange(8, dtype="<i4").tobytes()
        engine.send(p.StartGenerate(op="start_generate", id=0, req=p.WireRequest(
            id="r", prompt=prompt, sampling=p.WireSampling(max_tokens=2, ignore_eos=True))))
        deadline = time.monotonic() + 10
        while worker.steps < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
    finally:
        worker.running = False
        loop.join(timeout=5)
        engine.worker.close()
    [[_, count, seconds]] = worker.idle_spells.as_list()  # the decode step followed a step
    assert count == 1 and 0.04 < seconds < 5
