"""Faults on the simulator: each kind from one schedule; unaffected requests complete, affected ones
fail with EngineDown (or recover through failover), survivors hold no pages, new work is served.
And a fuzz test: random clusters, strategies, bursts, oversized prompts and fault schedules."""
from __future__ import annotations

import pytest
from burst_strategies import BidirectionalPD, Chain
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core_api.faults import Fault, FaultSchedule, failures_by_kind, load_faults, recovery
from core_api.workload import WorkloadSpec, generate
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig

WORKLOAD = WorkloadSpec(num_requests=150, arrival={"rate": 25}, prompt_len={"kind": "uniform", "low": 100, "high": 600},
                        output_len={"kind": "uniform", "low": 20, "high": 150})
PD_ROLES = {"prefill": ["e0"], "decode": ["e1", "e2"]}


def run(strategy: str, params: dict, faults: list[dict], heartbeat_timeout_s: float = 30.0, workload=WORKLOAD):
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=3, num_pages=3000)],
                                       strategy=StrategyConfig(name=strategy, params=params),
                                       heartbeat_timeout_s=heartbeat_timeout_s))
    result = cluster.run(generate(workload), faults=FaultSchedule(faults=faults))
    cluster.check_no_leaks()  # survivors: no page used or reserved
    return cluster, result


def after(result, t: float):
    return [r for r in result.records if r.arrival_time >= t]


def test_crash_mid_decode_fails_only_its_requests_and_new_ones_go_elsewhere():
    _, result = run("round_robin", {}, [{"at": 2.0, "kind": "crash", "engine": "e1"}])
    failed = [r for r in result.records if r.status != "ok"]
    assert failed and failures_by_kind(result.records) == {"EngineDown": len(failed)}
    assert all(r.tags["engine"] == "e1" and r.arrival_time < 2.0 and r.output_len > 0 for r in failed)
    # They fail when the router notices, its process watchdog period after the crash (0.1 s).
    assert all(abs(r.finish_time - 2.1) < 1e-9 for r in failed)
    # Sent to e1 in between, new requests wait for the notice and are retried elsewhere.
    assert all(r.status == "ok" for r in after(result, 2.0))
    assert all(r.tags["engine"] != "e1" for r in after(result, 2.1))
    assert recovery(result.records, 2.0) < 1.0


def test_crash_before_the_first_token_is_retried_on_another_engine():
    burst = WORKLOAD.model_copy(update={"arrival": WORKLOAD.arrival.model_copy(update={"rate": float("inf")})})
    _, result = run("least_loaded", {}, [{"at": 0.05, "kind": "crash", "engine": "e1"}], workload=burst)
    retried = [r for r in result.records if "retried_from" in r.tags]
    assert retried and all(r.status == "ok" and r.tags["retried_from"] == ["e1"] for r in retried)


def test_crash_of_the_only_prefill_engine_fails_over_to_local_prefill():
    _, result = run("pd", PD_ROLES, [{"at": 2.0, "kind": "crash", "engine": "e0"}])
    assert all(r.status == "ok" for r in result.records)
    moved = [r for r in result.records if r.tags.get("failover") == "local_prefill"]
    assert moved and all(r.tags["failover_reason"] in ("EngineDown", "TransferFailed") for r in moved)
    assert all(r.tags["prefill"] is None for r in after(result, 2.0))  # new requests skip the dead engine


def test_crash_of_a_decode_engine_mid_transfer_moves_its_requests_or_fails_them_after_their_first_token():
    _, result = run("pd", PD_ROLES, [{"at": 2.0, "kind": "crash", "engine": "e1"}])
    for r in result.records:
        if r.status != "ok":
            assert r.reason.startswith("EngineDown") and r.output_len > 0  # streamed already: no retry
    assert all(r.status == "ok" and r.tags["decode"] == "e2" for r in after(result, 2.0))


def test_without_failover_pd_fails_when_its_prefill_engine_dies():
    _, result = run("pd", {**PD_ROLES, "failover": False}, [{"at": 2.0, "kind": "crash", "engine": "e0"}])
    assert all(r.status == "failed" and r.reason.startswith("EngineDown") for r in after(result, 2.0))


def test_a_restarted_engine_rejoins_empty():
    cluster, result = run("round_robin", {}, [{"at": 1.0, "kind": "crash", "engine": "e1"},
                                              {"at": 3.0, "kind": "restart", "engine": "e1"}])
    assert cluster.engines["e1"].healthy and cluster.engines["e1"].incarnation == 1
    assert any(r.tags["engine"] == "e1" and r.status == "ok" for r in after(result, 3.0))
    assert all(r.status == "ok" for r in after(result, 1.0))


def test_a_short_stall_delays_but_fails_nothing():
    _, calm = run("round_robin", {}, [])
    _, result = run("round_robin", {}, [{"at": 2.0, "kind": "stall", "engine": "e1", "duration": 1.0}])
    assert all(r.status == "ok" for r in result.records)
    slow = {r.request_id: r.finish_time for r in result.records}
    base = {r.request_id: r.finish_time for r in calm.records}
    stalled = [k for k in slow if slow[k] - base[k] > 0.9]
    assert stalled and max(slow[k] - base[k] for k in slow) < 1.0 + 0.5


def test_a_stall_longer_than_the_heartbeat_timeout_is_a_false_death_then_a_rejoin():
    cluster, result = run("round_robin", {}, [{"at": 2.0, "kind": "stall", "engine": "e1", "duration": 3.0}],
                          heartbeat_timeout_s=1.0)
    failed = [r for r in result.records if r.status != "ok"]
    assert failed and all(r.reason.startswith("EngineDown") and "declared dead" in r.reason for r in failed)
    assert all(abs(r.finish_time - 3.0) < 1e-9 for r in failed)  # at stall start + heartbeat timeout
    assert cluster.engines["e1"].healthy  # it rejoined when it woke, its old work released
    assert any(r.tags["engine"] == "e1" and r.status == "ok" for r in after(result, 5.0))


def test_a_slow_engine_takes_longer_per_step():
    _, calm = run("round_robin", {}, [])
    _, slow = run("round_robin", {}, [{"at": 0.0, "kind": "slow", "engine": "e1", "duration": 100, "factor": 3}])
    def tpot(result, engine):
        return sum(r.token_times[-1] - r.token_times[0] for r in result.records if r.tags["engine"] == engine)
    assert tpot(slow, "e1") > 2.5 * tpot(calm, "e1")
    assert all(r.status == "ok" for r in slow.records)


def test_a_partition_holds_kv_transfers_until_it_ends_and_a_slow_link_stretches_them():
    long_prompts = WorkloadSpec.model_validate({**WORKLOAD.model_dump(), "prompt_len": {"kind": "fixed", "value": 2000},
                                                "output_len": {"kind": "fixed", "value": 10}})
    roles = {"prefill": ["e0"], "decode": ["e1", "e2"]}

    def mean_ttft(faults):
        cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=3, num_pages=8000)],
                                           strategy=StrategyConfig(name="pd", params=roles),
                                           link={"latency_s": 1e-5, "bandwidth_Bps": 5e9}))
        result = cluster.run(generate(long_prompts), faults=FaultSchedule(faults=faults))
        cluster.check_no_leaks()
        assert all(r.status == "ok" for r in result.records)
        return {r.request_id: r.token_times[0] - r.arrival_time for r in result.records}

    calm = mean_ttft([])
    cut = mean_ttft([{"at": 2.0, "kind": "partition", "engine": "e0", "peer": "e1", "duration": 1.0}])
    delayed = [k for k in cut if cut[k] - calm[k] > 0.5]
    # Held for the partition, plus the backlog it built up on the link and the decode engines.
    assert delayed and max(cut[k] - calm[k] for k in cut) < 1.0 + 0.5
    slow = mean_ttft([{"at": 0.0, "kind": "link_slow", "engine": "e0", "peer": "e2", "duration": 100, "factor": 50}])
    assert sum(slow.values()) > sum(calm.values())


def test_fault_schedules_are_checked(tmp_path):
    with pytest.raises(ValueError, match="has not crashed"):
        FaultSchedule(faults=[{"at": 1, "kind": "restart", "engine": "e0"}])
    with pytest.raises(ValueError, match="needs a duration"):
        Fault(at=1, kind="stall", engine="e0")
    with pytest.raises(ValueError, match="needs peer"):
        Fault(at=1, kind="partition", engine="e0", duration=1)
    with pytest.raises(ValueError, match="unknown engines \\['e9'\\]"):
        FaultSchedule(faults=[{"at": 1, "kind": "crash", "engine": "e9"}]).check_engines(["e0", "e1"])
    (tmp_path / "f.yaml").write_text("- {at: 1, kind: crash, engine: e0}\n- {at: 0.5, kind: slow, engine: e1}\n")
    with pytest.raises(ValueError, match=r"f.yaml: faults.1: .*needs a duration"):
        load_faults(tmp_path / "f.yaml")
    (tmp_path / "g.yaml").write_text("faults:\n  - {at: 2, kind: crash, engine: e0}\n  - {at: 1, kind: crash, engine: e1}\n")
    assert [f.engine for f in load_faults(tmp_path / "g.yaml").faults] == ["e1", "e0"]  # sorted by time


# -- fuzz --------------------------------------------------------------------------------------
STRATEGIES = {"round_robin": ({}, 2), "least_loaded": ({}, 2), "vllm_dp": ({}, 2), "pd": ({}, 2), "balanced_pd": ({"ratio": 0.3}, 2),
              "bidirectional": (None, 2), "chain": (None, 3)}


@st.composite
def scenario(draw):
    name = draw(st.sampled_from(sorted(STRATEGIES)))
    engines = draw(st.integers(STRATEGIES[name][1], 4))
    num_pages = draw(st.integers(200, 1500))
    faults, down = [], set()
    times = sorted(set(draw(st.lists(st.floats(0.0, 4.0), min_size=1, max_size=5))))  # a history, in time order
    for at in times:
        engine = f"e{draw(st.integers(0, engines - 1))}"
        kind = draw(st.sampled_from(["restart"] if engine in down else ["crash", "stall", "slow"]))
        fault = {"at": at, "kind": kind, "engine": engine}
        if kind in ("stall", "slow"):
            fault["duration"] = draw(st.floats(0.05, 3.0))
        if kind == "slow":
            fault["factor"] = draw(st.floats(1.5, 5.0))
        (down.add if kind == "crash" else down.discard)(engine)
        faults.append(fault)
    workload = WorkloadSpec(num_requests=draw(st.integers(10, 80)), seed=draw(st.integers(0, 1000)),
                            arrival={"rate": draw(st.sampled_from([5.0, 50.0, float("inf")]))},
                            prompt_len={"kind": "uniform", "low": 1, "high": draw(st.sampled_from([200, 3000, 40000]))},
                            output_len={"kind": "uniform", "low": 1, "high": 100},
                            prefix={"num_groups": 2, "prefix_len": 64, "fraction": 0.5})
    return name, engines, num_pages, faults, workload, draw(st.sampled_from([0.5, 30.0]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario())
def test_fuzz_every_run_ends_every_request_ends_no_page_leaks(case):
    name, engines, num_pages, faults, workload, heartbeat = case
    params, _ = STRATEGIES[name]
    strategy = {"bidirectional": BidirectionalPD, "chain": Chain}.get(name)
    schedule = FaultSchedule(faults=faults)
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=engines, num_pages=num_pages, max_model_len=8192,
                                                             reservation_timeout_s=5.0)],
                                       strategy=StrategyConfig(name="round_robin" if strategy else name,
                                                               params=params or {}),
                                       heartbeat_timeout_s=heartbeat))
    if strategy is not None:
        cluster.strategy = strategy(list(cluster.engines.values()), cluster.runtime)
    result = cluster.run(generate(workload), faults=schedule)
    for r in result.records:
        assert r.status in ("ok", "failed"), r
        assert r.status == "ok" or (r.reason and not r.reason.startswith("stalled")), r.reason
    cluster.check_no_leaks()
