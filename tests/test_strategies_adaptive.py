"""adaptive switches mode within one run when traffic turns from decode-heavy to prefill-heavy,
and the switch shows in the records' tags; every request follows the flow of the mode it got."""
from core_api.workload import Workload, WorkloadSpec, generate
from strategies.balanced_pd import split_at
from tests.test_strategies_harness import make_cluster, renamed, run_checked, shape, user_calls


def shifting_workload() -> Workload:
    """60 chat turns (short prompts, long outputs), then 60 summarisations (long prompts, short outputs)."""
    chat = generate(WorkloadSpec(num_requests=60, seed=1, arrival={"rate": 20.0},
                                 prompt_len={"kind": "uniform", "low": 32, "high": 128},
                                 output_len={"kind": "uniform", "low": 100, "high": 200}))
    docs = generate(WorkloadSpec(num_requests=60, seed=2, arrival={"rate": 40.0},
                                 prompt_len={"kind": "uniform", "low": 2000, "high": 4000},
                                 output_len={"kind": "uniform", "low": 2, "high": 8}))
    start = chat.requests[-1].arrival_time + 0.5
    return Workload(renamed(chat, "chat-") + renamed(docs, "doc-", shift=start), name="shifting")


def test_adaptive_switches_from_data_parallel_to_disaggregation_within_one_run():
    cluster, log, _counters = make_cluster("adaptive", {"interval": 8, "window": 16, "queue_high": 4096},
                                          num_pages=4096)
    workload = shifting_workload()
    result = run_checked(cluster, workload)
    by_id = {r.request_id: r for r in result.records}
    chat = [by_id[r.id] for r in workload if r.id.startswith("chat-")]
    docs = [by_id[r.id] for r in workload if r.id.startswith("doc-")]
    assert all(r.tags["mode"] == "dp" for r in chat)
    assert {r.tags["mode"] for r in docs[16:]} <= {"pd", "balanced_pd"}
    assert any(r.tags["mode"] == "balanced_pd" and r.tags["ratio"] > 0 for r in docs)  # prefill backlog
    strategy = cluster.strategy
    assert [m for _, m, _ in strategy.switches][:1] == ["pd"]
    assert all(docs[0].arrival_time <= t <= docs[-1].arrival_time for t, _, _ in strategy.switches)
    for rec in result.records:
        calls = user_calls(log, rec.request_id)
        if rec.tags["mode"] == "dp":
            assert shape(calls) == ["start_generate"] and calls[0].engine == rec.tags["engine"]
            continue
        split = split_at(rec.prompt_len, rec.tags["ratio"])
        assert rec.tags["split"] == split
        assert shape(calls) == ["prep_recv", "remote_send", "start_generate"]
        assert calls[0].args["end"] == split and calls[1].args["end"] == split
        assert calls[1].engine in ("e0", "e1") and calls[2].engine in ("e2", "e3")
        assert calls[2].args["begin"] == split


def test_adaptive_period_replans_by_time():
    cluster, _, _ = make_cluster("adaptive", {"interval": 1000, "period_s": 0.5, "window": 8}, num_pages=4096)
    result = run_checked(cluster, shifting_workload())
    assert any(r.tags["mode"] != "dp" for r in result.records)
