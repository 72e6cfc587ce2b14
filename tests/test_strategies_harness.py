"""Shared helpers for the strategy tests: a small simulated cluster whose engines are wrapped in
RecordingEngines (every sub-request call logged) and whose cost models count the work each
engine computed (prefill tokens, sampled rows). No tests here."""
from __future__ import annotations

import dataclasses

import numpy as np

from core_api.recording import Call, calls_for, wrap_all
from core_api.strategy import build
from core_api.types import Request, SamplingParams
from core_api.workload import Workload, WorkloadSpec, generate
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig


class CountingCost:
    """Cost-model proxy that sums each step's work: what an engine really computed."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.prefill_tokens = 0
        self.sampled = 0

    def step_time(self, features) -> float:
        self.prefill_tokens += features.prefill_tokens
        self.sampled += features.sampled
        return self.inner.step_time(features)

    def describe(self) -> dict:
        return self.inner.describe()


def make_cluster(name: str, params: dict | None = None, n: int = 4, **engine: object):
    """(cluster, log, counters): strategy `name` over recorded engines of a fresh cluster."""
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=n, **engine)]))
    wrapped = wrap_all(cluster.engines.values(), clock=cluster.runtime.now)
    cluster.strategy = build(name, wrapped, cluster.runtime, params or {})
    counters = {}
    for eid, e in cluster.engines.items():
        e.cost_model = counters[eid] = CountingCost(e.cost_model)
        e.fast_forward = False  # one step_time call per executed step, so the counts are exact
    return cluster, wrapped[0].log, counters


def run_checked(cluster: SimCluster, workload: Workload):
    """Run, then assert every request completed with all its tokens and no page leaked."""
    result = cluster.run(workload)
    cluster.check_no_leaks()
    bad = [(r.request_id, r.status, r.reason) for r in result.records if r.status != "ok"]
    assert not bad, bad
    for r in result.records:
        assert r.output_len == r.max_tokens, (r.request_id, r.output_len, r.max_tokens)
    return result


def renamed(workload: Workload, prefix: str, shift: float = 0.0) -> list[Request]:
    return [dataclasses.replace(r, id=f"{prefix}{r.id}", arrival_time=r.arrival_time + shift,
                                sampling=dataclasses.replace(r.sampling)) for r in workload]


def mixed_workload(n: int = 80, seed: int = 0, rate: float = 20.0, prefix: bool = True) -> Workload:
    """Short and long prompts, some sharing a prefix, plus edge cases: a 1-token prompt, a prompt of
    exactly one page, a prompt one token past a page, and a 1-token output."""
    spec = WorkloadSpec(
        num_requests=n, seed=seed, arrival={"process": "poisson", "rate": rate},
        prompt_len={"kind": "lognormal", "mean": 300, "sigma": 1.0, "max": 3000},
        output_len={"kind": "lognormal", "mean": 24, "sigma": 0.8, "max": 200},
        prefix={"num_groups": 3, "prefix_len": 200, "fraction": 0.5} if prefix else None,
    )
    requests = list(generate(spec))
    rng = np.random.default_rng(seed + 1)
    for i, (plen, out) in enumerate([(1, 4), (16, 3), (17, 5), (40, 1)]):
        prompt = rng.integers(0, 32000, size=plen, dtype=np.int32)
        requests.append(Request(f"edge{i}", prompt, SamplingParams(max_tokens=out, ignore_eos=True),
                                arrival_time=0.05 * (i + 1)))
    return Workload(requests, name="mixed")


def user_calls(log: list[Call], req_id: str) -> list[Call]:
    return calls_for(log, req_id)


def shape(calls: list[Call]) -> list[str]:
    return [c.method for c in calls]
