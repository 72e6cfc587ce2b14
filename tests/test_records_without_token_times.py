"""Runs that drop per-token times (token_times: false): per-request metrics stay exact, ITL
percentiles come from a histogram within 0.1%, and what needs every token's time says so."""
from __future__ import annotations

import numpy as np
import pytest

from core_api import itl_histogram
from core_api.itl_histogram import ALPHA, ItlHistogram
from core_api.metrics import summarize
from core_api.vllm_format import vllm_bench_result
from microserving.cli import main
from sim.cluster import simulate
from sim.config import SimConfig

CONFIG = {"cluster": {"engines": [{"count": 3}], "strategy": {"name": "pd"}},
          "workload": {"num_requests": 150, "arrival": {"rate": 30},
                       "prompt_len": {"kind": "lognormal", "mean": 600, "sigma": 0.8, "max": 4000},
                       "output_len": {"kind": "uniform", "low": 1, "high": 200}},
          "faults": {"faults": [{"kind": "crash", "engine": "e2", "at": 1.5}]}}


def test_histogram_percentiles_are_within_alpha_and_moments_exact(monkeypatch):
    monkeypatch.setattr(itl_histogram, "_FLUSH", 1000)  # many merges
    rng = np.random.default_rng(1)
    requests = [np.cumsum(np.concatenate([[5.0], rng.lognormal(-4.5, 0.6, n), np.zeros(n % 3)]))
                for n in rng.integers(0, 60, 400)]
    hist = ItlHistogram()
    for times in requests:
        hist.add_request(list(times))
    gaps = np.concatenate([np.diff(t) for t in requests])
    pcts = (1, 25, 50, 90, 99, 99.9)
    got = hist.stats("itl", pcts)
    assert hist.count == gaps.size
    assert got["mean_itl_ms"] == pytest.approx(gaps.mean() * 1e3, rel=1e-12)
    assert got["std_itl_ms"] == pytest.approx(gaps.std() * 1e3, rel=1e-9)
    for p, exact in zip(pcts, np.percentile(gaps, pcts)):
        key = f"p{p:g}_itl_ms"
        assert abs(got[key] - exact * 1e3) <= ALPHA * exact * 1e3 + 1e-12, key
    assert got["median_itl_ms"] == pytest.approx(np.median(gaps) * 1e3, rel=ALPHA)


def test_a_run_without_token_times_reports_the_same_metrics():
    full = simulate(SimConfig.model_validate(CONFIG))
    lean = simulate(SimConfig.model_validate({**CONFIG, "token_times": False}))
    assert {r.status for r in full.records} == {"ok", "failed"}  # the crash fails some: their gaps are left out
    exact, approx = full.metrics(), lean.metrics()
    for key, value in exact.items():
        if "_itl_ms" in key and not key.startswith(("mean", "std")):
            assert approx[key] == pytest.approx(value, rel=ALPHA), key
        elif "_itl_ms" in key:
            assert approx[key] == pytest.approx(value, rel=1e-9), key
        else:
            assert approx[key] == value, key
    for a, b in zip(full.records, lean.records):
        assert (a.output_len, a.first_token_time, a.last_token_time, a.finish_time, a.status) == \
               (b.output_len, b.first_token_time, b.last_token_time, b.finish_time, b.status)
        assert not b.token_times
    record = lean.to_dict()["records"][0]
    assert "token_times" not in record and {"output_len", "first_token_time", "last_token_time"} <= set(record)


def test_what_needs_every_token_time_refuses_records_without_them(tmp_path, capsys):
    lean = simulate(SimConfig.model_validate({**CONFIG, "token_times": False, "faults": {"faults": []}}))
    with pytest.raises(ValueError, match="their ITL needs the run's ItlHistogram"):
        summarize(lean.records)
    with pytest.raises(ValueError, match="dropped their token times"):
        vllm_bench_result(lean.records, lean.metrics(), backend="sim", model_id="m", request_rate=1.0)
    assert main(["sim", "--no-token-times", "--num-requests", "5", "--out-vllm", str(tmp_path / "v.json")]) == 2
    assert "--out-vllm writes every request's inter-token gaps" in capsys.readouterr().err
    assert not (tmp_path / "v.json").exists()
