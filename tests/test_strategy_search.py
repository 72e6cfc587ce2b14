"""Strategy search enumeration and ranking; the paper experiment's configurations."""
from core_api.workload import WorkloadSpec
from experiments import paper_microserving as paper
from experiments.strategy_search import candidates, format_rows, search
from experiments.sweep import run_one
from sim.config import EngineConfig


def test_candidates_cover_tp_splits_and_ratios():
    cands = candidates(4, "H100-SXM", "Llama-3.1-8B", tps=(1, 2, 4, 8), ratios=(0.1, 0.2),
                       strategies=["round_robin", "pd", "balanced_pd"])
    labels = [c.label for c in cands]
    assert "1xTP4" in labels and "4xTP1 round_robin" in labels and "2xTP2 pd 1P1D" in labels
    assert "4xTP1 pd 3P1D" in labels and "4xTP1 balanced_pd 1P3D ratio=0.2" in labels
    assert not any("TP8" in s for s in labels)  # 8 does not divide 4 GPUs
    pd31 = next(c for c in cands if c.label == "4xTP1 pd 3P1D")
    assert pd31.strategy.params == {"prefill": ["e0", "e1", "e2"], "decode": ["e3"]}
    # 70B in bf16 does not fit one 80 GB GPU: no TP1 layouts
    assert not any(c.tp == 1 for c in candidates(8, "H100-SXM", "Llama-3.1-70B", "bf16"))


def test_search_ranks_by_attainment_then_p99():
    workload = WorkloadSpec(num_requests=30, arrival={"rate": 40.0}, prompt_len={"kind": "fixed", "value": 400},
                            output_len={"kind": "fixed", "value": 8})
    rows = search(EngineConfig(num_pages=2048), 2, workload, {"ttft_ms": 100.0}, jobs=1,
                  tps=(1, 2), strategies=["round_robin", "pd"])
    assert [r["label"] for r in rows].count("2xTP1 pd 1P1D") == 1 and len(rows) == 3
    keys = [(-round(r["metrics"]["slo_attainment"], 3), r["metrics"]["p99_e2el_ms"]) for r in rows]
    assert keys == sorted(keys)
    assert "attain" in format_rows(rows, 3, capacity=False).splitlines()[0]


def test_paper_configs_and_warmup_exclusion():
    runs = paper.spec([0], [1.6]).runs()
    assert sorted((r.labels["cluster"], r.labels["strategy"]) for r in runs) == sorted(paper.CONFIGS.values())
    for r in runs:
        engines = r.cluster.expanded()
        assert sum(e.tp for _, e in engines) == 8 and all(e.model == "Llama-3.1-70B" for _, e in engines)
        assert r.workload.num_requests == 140 and r.warmup_requests == 40
    bpd = next(r for r in runs if r.labels["strategy"].startswith("balanced_pd"))
    assert bpd.cluster.strategy.params == {"prefill": ["e0"], "decode": ["e1"], "ratio": 0.1}
    line = run_one(bpd)
    assert line["status"] == "ok" and line["measured_requests"] == 100 and line["metrics"]["completed"] == 100
    ratios = paper.spec([0], [5.6], [0.0, 0.5]).runs()
    assert [r.cluster.strategy.params["ratio"] for r in ratios] == [0.0, 0.5]
