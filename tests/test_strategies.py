"""Each strategy issues exactly the sub-requests it promises, completes a mixed workload, and leaves
no page behind. Calls are recorded by RecordingEngine wrappers; the work each engine computed is
counted by a cost-model proxy (see test_strategies_harness)."""
import pytest

from core_api.strategy import known_strategies
from strategies.balanced_pd import split_at
from tests.test_strategies_harness import make_cluster, mixed_workload, run_checked, shape, user_calls

ALL = ["round_robin", "least_loaded", "vllm_dp", "prefix_aware", "prefix_migration", "pd", "pd_prefix_aware",
       "balanced_pd", "adaptive"]


def test_every_builtin_strategy_is_registered():
    assert set(ALL) <= set(known_strategies())


@pytest.mark.parametrize("name", ALL)
def test_every_strategy_completes_a_mixed_workload_without_leaks(name):
    cluster, log, _ = make_cluster(name, num_pages=2048)
    result = run_checked(cluster, mixed_workload())
    assert len(result.records) == 84
    assert all(c.done for c in log if c.method != "release")
    for stats in result.engine_stats.values():
        assert stats["pages"]["used"] == stats["pages"]["reserved"] == 0


@pytest.mark.parametrize("name", ["round_robin", "least_loaded", "vllm_dp", "prefix_aware"])
def test_data_parallel_strategies_issue_one_start_generate(name):
    cluster, log, _counters = make_cluster(name, num_pages=2048)
    workload = mixed_workload()
    result = run_checked(cluster, workload)
    for req in workload:
        calls = user_calls(log, req.id)
        assert shape(calls) == ["start_generate"] and calls[0].args["begin"] == 0
    by_id = {r.request_id: r for r in result.records}
    for req in workload:
        assert user_calls(log, req.id)[0].engine == by_id[req.id].tags["engine"]
    if name == "round_robin":
        engines = [user_calls(log, r.id)[0].engine for r in workload]
        assert engines[:8] == ["e0", "e1", "e2", "e3"] * 2


def test_pd_sends_all_but_the_last_token_and_the_prefill_engine_never_samples():
    cluster, log, counters = make_cluster("pd", num_pages=2048)
    workload = mixed_workload()
    result = run_checked(cluster, workload)
    for req in workload:
        calls = user_calls(log, req.id)
        n, tags = req.prompt_len, {r.request_id: r.tags for r in result.records}[req.id]
        end = n - 1
        assert calls[-1].method == "start_generate" and calls[-1].engine in ("e2", "e3")
        assert calls[-1].args["begin"] == end
        if n == 1:  # nothing to move: the decode engine computes the single token
            assert shape(calls) == ["start_generate"]
            continue
        recv = calls[0]
        assert recv.method == "prep_recv" and recv.engine == calls[-1].engine and recv.args["end"] == end
        matched = recv.result["matched"]
        assert tags["matched"] == matched and matched % 16 == 0 and matched <= end
        if matched == end:  # the decode engine caches all of it: no send
            assert shape(calls) == ["prep_recv", "start_generate"]
            continue
        send = calls[1]
        assert shape(calls) == ["prep_recv", "remote_send", "start_generate"]
        assert send.engine in ("e0", "e1") and send.args == {"dst": recv.engine, "begin": matched, "end": end}
    for eid in ("e0", "e1"):
        assert counters[eid].sampled == 0
        assert not [c for c in log if c.engine == eid and c.method == "start_generate"]
    assert sum(counters[e].sampled for e in ("e2", "e3")) == sum(r.sampling.max_tokens for r in workload)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.6])
def test_balanced_pd_transfers_exactly_the_head_and_decode_prefills_the_tail(ratio):
    cluster, log, counters = make_cluster("balanced_pd", {"ratio": ratio, "prefill": ["e0"],
                                                          "decode": ["e1", "e2"]}, n=3, num_pages=2048)
    workload = mixed_workload(prefix=False)  # no shared prefixes: every token is computed once
    result = run_checked(cluster, workload)
    splits = {r.id: split_at(r.prompt_len, ratio) for r in workload}
    for req in workload:
        split, calls = splits[req.id], user_calls(log, req.id)
        assert {r.request_id: r.tags for r in result.records}[req.id]["split"] == split
        assert req.prompt_len - split == max(1, round(ratio * req.prompt_len + 1e-9)) or split == 0
        if split == 0:
            assert shape(calls) == ["start_generate"]
        else:
            assert shape(calls) == ["prep_recv", "remote_send", "start_generate"]
            assert calls[0].args["end"] == split and calls[0].result["matched"] == 0
            assert calls[1].engine == "e0" and calls[1].args == {"dst": calls[0].engine, "begin": 0, "end": split}
        assert calls[-1].args["begin"] == split
    kv_bytes = cluster.engines["e0"].kv_bytes_per_token
    moved = sum(s["bytes"] for s in result.network_stats.values())
    assert moved == pytest.approx(sum(splits.values()) * kv_bytes)
    assert counters["e0"].prefill_tokens == sum(splits.values())
    assert counters["e0"].sampled == 0
    tail = sum(r.prompt_len - splits[r.id] for r in workload)
    assert counters["e1"].prefill_tokens + counters["e2"].prefill_tokens == tail


def test_split_at_edges():
    assert split_at(1, 0.0) == 0 and split_at(1, 0.9) == 0  # a 1-token prompt: nothing to send
    assert split_at(100, 0.0) == 99  # ratio 0 is plain PD: all but the last token
    assert split_at(100, 0.004) == 99  # rounds to 0 tokens: still at least 1 on decode
    assert split_at(100, 0.25) == 75
    assert split_at(2, 0.99) == 0


def test_pd_prefix_aware_sends_only_the_uncached_part_and_skips_prefill_for_short_suffixes():
    from core_api.workload import WorkloadSpec, generate

    workload = generate(WorkloadSpec(
        num_requests=60, arrival={"rate": 10.0}, prompt_len={"kind": "uniform", "low": 5, "high": 90},
        output_len={"kind": "fixed", "value": 8}, prefix={"num_groups": 2, "prefix_len": 512}))
    cluster, log, counters = make_cluster("pd_prefix_aware", {"max_local_tokens": 100}, num_pages=2048)
    result = run_checked(cluster, workload)
    modes = {"local": 0, "pd": 0}
    for rec in result.records:
        calls, n = user_calls(log, rec.request_id), rec.prompt_len
        matched = calls[0].result["matched"]
        assert calls[0].method == "prep_recv" and calls[0].args["end"] == n - 1 and rec.tags["matched"] == matched
        modes[rec.tags["mode"]] += 1
        if rec.tags["mode"] == "local":
            assert n - matched <= 100 or matched == n - 1
            assert shape(calls) == ["prep_recv", "start_generate"] and calls[1].args["begin"] == matched
        else:
            assert n - matched > 100
            assert shape(calls) == ["prep_recv", "remote_send", "start_generate"]
            assert calls[1].args["begin"] == matched and calls[2].args["begin"] == n - 1
    assert modes["local"] >= 50 and modes["pd"] >= 2  # first sight of each prefix goes to a prefill engine
    assert counters["e0"].sampled == counters["e1"].sampled == 0


def test_prefix_aware_follows_the_cache():
    from core_api.workload import WorkloadSpec, generate

    workload = generate(WorkloadSpec(
        num_requests=60, arrival={"rate": 5.0}, prompt_len={"kind": "uniform", "low": 5, "high": 100},
        output_len={"kind": "fixed", "value": 4}, prefix={"num_groups": 3, "prefix_len": 512}))
    cluster, _log, _ = make_cluster("prefix_aware", num_pages=2048)
    result = run_checked(cluster, workload)
    homes: dict[int, set] = {}
    for req, rec in zip(workload, result.records):
        if rec.tags["mode"] == "hit":
            assert rec.tags["matched"] == 512
            homes.setdefault(req.prefix_group, set()).add(rec.tags["engine"])
    assert sum(r.tags["mode"] == "hit" for r in result.records) >= 50
    assert all(len(engines) == 1 for engines in homes.values())  # light load: affinity holds
    hits = sum(s["prefix_hit_tokens"] for s in result.engine_stats.values())
    assert hits >= 50 * 512


def test_the_comparison_script_runs_every_strategy_and_saves_the_table(tmp_path, capsys):
    import json

    from experiments.compare_strategies import VARIANTS, main

    assert main(["--num-requests", "12", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "p99 TTFT" in out and "wrote" in out
    rows = json.loads(next(tmp_path.glob("*.json")).read_text())["rows"]
    assert len(rows) == 2 * len(VARIANTS) and {r["name"] for r in rows} >= set(ALL)
    assert all(r["completed"] == 12 and r["failed"] == 0 for r in rows)
    assert len(next(tmp_path.glob("*.csv")).read_text().splitlines()) == len(rows) + 1
