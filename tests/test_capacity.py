"""Capacity search on a toy whose answer is known in closed form.

Toy: one engine, max_num_seqs=1, a fitted cost model with a constant step time c (every step
costs c, whatever it computes), prompts that fit one prefill step, O output tokens each. A
request then holds the engine for exactly O steps, S = O * c, and its first token comes one
step after it starts. With evenly spaced arrivals (gap g = 1/rate) and g < S, request k starts
at k * S, so TTFT_k = k * (S - g) + c: the k-th request waits k times the deficit.

With a TTFT limit T, request k is good iff k <= (T - c) / (S - g). n requests, target share q:
the first m = ceil(q * n) requests must be good, i.e. (m - 1) * (S - g) <= T - c, so

    capacity = 1 / (S - (T - c) / (m - 1))

slightly above the naive 1 / S, because a short queue is allowed. Numbers below: c = 10 ms,
O = 10, S = 100 ms, T = 27 ms, n = 20, q = 0.9 -> m = 18 -> capacity = 1 / 0.099 = 10.1010 req/s.
"""
import json

import numpy as np
import pytest

from core_api.workload import Workload
from experiments.capacity import attainment_at, find_capacity
from sim.config import ClusterConfig, EngineConfig

C, O, N, T_MS, Q = 0.010, 10, 20, 27.0, 0.9
S = O * C
CAPACITY = 1 / (S - (T_MS / 1e3 - C) / (int(np.ceil(Q * N)) - 1))


@pytest.fixture
def toy(tmp_path):
    profile = {"hardware": "toy", "model": "Llama-3.1-8B", "dtype": "bf16", "tp": 1, "page_size": 16,
               "engine_version": "toy", "coefficients": {"const": C}, "sample_count": 0, "created": "2025-01-01"}
    path = tmp_path / "const_step.json"
    path.write_text(json.dumps(profile))
    cluster = ClusterConfig(engines=[EngineConfig(num_pages=256, max_num_seqs=1)], cost_model=str(path))
    workload = Workload.from_lengths(np.arange(N, dtype=float), [64] * N, [O] * N, np.random.default_rng(0))
    return cluster, workload


def test_toy_timings_are_what_the_formula_assumes(toy):
    cluster, workload = toy
    att, m = attainment_at(cluster, workload, 1 / S, {"ttft_ms": T_MS})
    assert att == 1.0 and m["mean_ttft_ms"] == pytest.approx(C * 1e3) and m["mean_tpot_ms"] == pytest.approx(C * 1e3)
    att, m = attainment_at(cluster, workload, 12.0, {"ttft_ms": T_MS})
    k = np.arange(N)
    assert m["p99_ttft_ms"] == pytest.approx(np.percentile((k * (S - 1 / 12) + C) * 1e3, 99))
    assert att == np.mean(k * (S - 1 / 12) + C <= T_MS / 1e3)


def test_capacity_matches_the_closed_form(toy):
    cluster, workload = toy
    res = find_capacity(cluster, workload, {"ttft_ms": T_MS, "tpot_ms": 10.5}, target=Q, start_rate=2.0,
                        rel_tol=0.002)
    assert res.rate == pytest.approx(CAPACITY, rel=0.002)
    lo, hi = res.bracket
    assert lo <= CAPACITY * (1 + 1e-9) and hi >= CAPACITY * (1 - 1e-9)
    for p in res.probes:  # every probe agrees with the formula (away from the knife edge)
        if abs(p.rate - CAPACITY) > 1e-6:
            assert p.passed == (p.rate < CAPACITY)
    assert res.metrics["slo_attainment"] >= Q


def test_capacity_from_above_and_when_nothing_passes(toy):
    cluster, workload = toy
    res = find_capacity(cluster, workload, {"ttft_ms": T_MS}, target=Q, start_rate=50.0, rel_tol=0.01)
    assert res.rate == pytest.approx(CAPACITY, rel=0.01)
    none = find_capacity(cluster, workload, {"ttft_ms": 5.0}, target=Q, start_rate=1.0, min_rate=0.1)
    assert none.rate == 0.0
    with pytest.raises(ValueError, match="at least one SLO"):
        find_capacity(cluster, workload, {})
