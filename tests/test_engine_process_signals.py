"""An engine process ends cleanly on SIGTERM and on SIGINT: exit code 0, its KV pool file removed,
nothing on stderr, within a second (its idle poll's 100 ms, not the launcher's 5 s SIGKILL)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from real.cluster import RealCluster
from real.config import RealClusterConfig


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_an_engine_process_stops_cleanly_on_a_signal(sig, capfd):
    cluster = RealCluster(RealClusterConfig(engines=[{"id": "e0", "model": "tiny", "num_pages": 64}])).start()
    try:
        proc, pool = cluster.procs["e0"], cluster.shm_files.get("e0")
        time.sleep(0.3)  # into its idle poll
        t0 = time.monotonic()
        proc.send_signal(sig)
        assert proc.wait(5.0) == 0
        assert time.monotonic() - t0 < 1.0
        assert pool is None or not os.path.exists(pool)
    finally:
        cluster.close()
    assert "Traceback" not in capfd.readouterr().err
