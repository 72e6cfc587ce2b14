"""A fault schedule applied to real engine processes: failover when the only prefill engine dies,
a false death (stall past the heartbeat timeout) fenced off and repaired, a crashed engine
restarted on its address and taken back. Survivors hold no pages; new work is served."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pytest
from real_helpers import run

from core_api.faults import FaultSchedule, failures_by_kind
from core_api.types import Request, SamplingParams
from core_api.workload import Workload
from real.cluster import RealCluster, check_no_leaks, run_workload
from real.config import RealClusterConfig
from real.faults import run_with_faults

# Processes, signals and heartbeats over tens of seconds: the slow suite (`pytest -m slow`).
pytestmark = pytest.mark.slow
ENGINE = {"model": "tiny", "num_pages": 512, "max_num_batched_tokens": 256}


def steady(n: int, rate: float, max_tokens: int, seed: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    return [Request(f"q{i}", rng.integers(0, 256, int(rng.integers(40, 120)), dtype=np.int32),
                    SamplingParams(max_tokens=max_tokens), arrival_time=i / rate) for i in range(n)]


def faulted_run(engines: int, strategy: str, params: dict, faults: list[dict], reqs, heartbeat_timeout_s=30.0,
                follow_up: list[Request] | None = None):
    config = RealClusterConfig(engines=[{"count": engines, **ENGINE}], heartbeat_timeout_s=heartbeat_timeout_s,
                               heartbeat_s=0.2)

    async def go(cluster):
        async with cluster.session() as conns:
            engines_ = list(conns.values())
            result = await run_with_faults(cluster, dict(conns), Workload(reqs), strategy, params,
                                           FaultSchedule(faults=faults), settle_s=10.0 if follow_up else 0.0)
            later = None
            if follow_up is not None:
                later = await run_workload(engines_, Workload(follow_up), strategy, params)
            stats = await check_no_leaks([e for e in engines_ if e.healthy])
            return result, later, stats, {e.id: e.incarnation for e in engines_}

    with RealCluster(config) as cluster:
        return run(go(cluster))


def test_pd_survives_the_death_of_its_only_prefill_engine():
    reqs = steady(30, rate=15, max_tokens=8)
    result, _, stats, _ = faulted_run(3, "pd", {"prefill": ["e0"], "decode": ["e1", "e2"]},
                                      [{"at": 0.8, "kind": "crash", "engine": "e0"}], reqs)
    assert all(r.status == "ok" for r in result.records), failures_by_kind(result.records)
    assert any(r.tags.get("failover") == "local_prefill" or r.tags.get("prefill") is None for r in result.records)
    assert set(stats) == {"e1", "e2"}


def test_a_false_death_is_fenced_off_and_repaired():
    reqs = steady(24, rate=12, max_tokens=150)  # long enough that some stream on e1 when it freezes
    result, later, stats, incarnations = faulted_run(
        2, "round_robin", {}, [{"at": 0.5, "kind": "stall", "engine": "e1", "duration": 2.5}], reqs,
        heartbeat_timeout_s=1.0, follow_up=steady(6, rate=20, max_tokens=4, seed=1))
    failed = [r for r in result.records if r.status != "ok"]  # those streaming on e1 when it froze
    assert failures_by_kind(result.records) == ({"EngineDown": len(failed)} if failed else {})
    assert all(r.tags["engine"] == "e1" and r.output_len > 0 for r in failed)  # streamed: not retried
    assert incarnations == {"e0": 0, "e1": 1}  # taken back as a new incarnation
    assert stats["e1"]["pages"]["used"] == 0 and stats["e1"]["running"] == 0  # no zombie work left
    assert all(r.status == "ok" for r in later.records)
    assert {r.tags["engine"] for r in later.records} == {"e0", "e1"}


def test_a_crashed_engine_restarted_on_its_address_serves_again():
    reqs = steady(16, rate=10, max_tokens=20)
    result, later, _, incarnations = faulted_run(
        2, "round_robin", {}, [{"at": 0.4, "kind": "crash", "engine": "e1"}, {"at": 1.0, "kind": "restart", "engine": "e1"}],
        reqs, follow_up=steady(6, rate=20, max_tokens=4, seed=2))
    assert incarnations["e1"] == 1
    assert all(r.status == "ok" for r in later.records) and "e1" in {r.tags["engine"] for r in later.records}
    assert all(r.status == "ok" or r.reason.startswith("EngineDown") for r in result.records)


def test_a_partition_holds_kv_until_it_ends_and_a_slow_link_still_delivers():
    reqs = steady(30, rate=15, max_tokens=4)
    roles = {"prefill": ["e0"], "decode": ["e1"]}
    calm, _, _, _ = faulted_run(2, "pd", roles, [], reqs)
    cut, _, stats, _ = faulted_run(2, "pd", roles, [{"at": 0.5, "kind": "partition", "engine": "e0", "peer": "e1",
                                                      "duration": 1.0}], reqs)
    assert all(r.status == "ok" for r in cut.records)
    ttft = {r.request_id: r.token_times[0] - r.arrival_time for r in cut.records}
    base = {r.request_id: r.token_times[0] - r.arrival_time for r in calm.records}
    held = [k for k in ttft if 0.5 <= next(r.arrival_time for r in cut.records if r.request_id == k) < 1.3]
    assert held and min(ttft[k] for k in held) > 0.15  # waited for the link, not for compute
    assert max(ttft.values()) < 1.0 + 0.5 + max(base.values())
    assert all(s["pages"]["used"] == 0 for s in stats.values())
    slow, _, _, _ = faulted_run(2, "pd", roles, [{"at": 0.0, "kind": "link_slow", "engine": "e0", "peer": "e1",
                                                   "duration": 5.0, "factor": 20}], reqs)
    assert all(r.status == "ok" for r in slow.records)


def test_engines_reached_by_address_are_declared_dead_sooner():
    # auth off: a cluster mixing local and remote engines otherwise needs a shared key directory
    config = RealClusterConfig(engines=[{"id": "local", **ENGINE}, {"id": "far", "address": "tcp://127.0.0.1:1"}],
                               auth=False)
    cluster = RealCluster(config)
    assert cluster.heartbeat_timeout_for("local") == 30.0
    assert cluster.heartbeat_timeout_for("far") == 5.0


def test_a_killed_engine_reached_by_address_is_declared_dead_in_5_s_and_leaves_no_pool_file():
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "microserving.cli", "engine", "--listen", f"tcp://127.0.0.1:{port}",
                             "--id", "far"], stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))
    try:
        assert "listening on" in proc.stdout.readline()
        cluster = RealCluster(RealClusterConfig(engines=[{"id": "far", "address": f"tcp://127.0.0.1:{port}"}],
                                                heartbeat_s=0.2))

        async def go():
            async with cluster.session() as engines:
                far = engines["far"]
                pool = far.info["shm"]
                assert pool and os.path.exists(pool)
                proc.kill()
                t0 = time.monotonic()
                while far.healthy and time.monotonic() - t0 < 10:
                    await asyncio.sleep(0.1)
                declared = time.monotonic() - t0
                await asyncio.sleep(0.5)  # a heartbeat round after: the pool file goes
                return declared, pool

        declared, pool = run(go())
        assert declared < 5.0 + 0.5
        assert not os.path.exists(pool)
    finally:
        proc.kill()
        proc.wait(10)
