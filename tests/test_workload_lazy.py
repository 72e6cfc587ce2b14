"""Lazy workloads: requests built a chunk at a time are the same requests, and a simulation holds
only the prompts of requests in flight."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

from core_api import request_stream
from core_api.workload import LazyWorkload, WorkloadSpec, generate
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig

SPEC = WorkloadSpec(num_requests=50, arrival={"rate": 40}, prompt_len={"kind": "uniform", "low": 20, "high": 300},
                    output_len={"kind": "uniform", "low": 1, "high": 20},
                    prefix={"num_groups": 3, "prefix_len": 64, "fraction": 0.5}, seed=3)


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(request_stream, "CHUNK", 8)


def _same(a, b) -> None:
    assert [r.id for r in a] == [r.id for r in b]
    for x, y in zip(a, b):
        assert np.array_equal(x.prompt, y.prompt) and x.arrival_time == y.arrival_time
        assert (x.sampling, x.prefix_group, x.prefix_len) == (y.sampling, y.prefix_group, y.prefix_len)


def test_lazy_and_eager_workloads_hold_the_same_requests(small_chunks):
    eager, lazy = generate(SPEC), generate(SPEC, lazy=True)
    assert isinstance(lazy, LazyWorkload) and len(lazy) == len(eager) == 50
    _same(eager, list(lazy))
    _same(list(lazy), list(lazy))  # iterating again builds the same requests
    assert np.array_equal(lazy.arrival_times, eager.arrival_times)
    assert lazy[7].id == "r7" and np.array_equal(lazy[-1].prompt, eager[-1].prompt)  # one chunk built
    with pytest.raises(IndexError):
        lazy[50]
    grouped = [r for r in eager if r.prefix_group is not None]
    assert grouped and all(np.array_equal(r.prompt[:64], grouped[0].prompt[:64])
                           for r in grouped if r.prefix_group == grouped[0].prefix_group)


def test_a_simulation_drops_each_prompt_once_its_request_is_served(small_chunks):
    """Every prompt's tokens are freed by the end of the run (records keep none), so a run of
    millions of requests holds only those in flight."""
    prompts: list[weakref.ref] = []

    class Watched(LazyWorkload):
        def __iter__(self):
            for req in super().__iter__():
                prompts.append(weakref.ref(req.prompt.base if req.prompt.base is not None else req.prompt))
                yield req

    lazy = generate(SPEC, lazy=True)
    watched = Watched(lazy._stream, name=lazy.name, spec=SPEC)
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=2)], strategy=StrategyConfig(name="pd")))
    result = cluster.run(watched)
    eager = SimCluster(ClusterConfig(engines=[EngineConfig(count=2)], strategy=StrategyConfig(name="pd"))).run(
        generate(SPEC))
    assert result.to_dict()["records"] == eager.to_dict()["records"]
    del watched, lazy
    gc.collect()
    assert len(prompts) == 50 and all(ref() is None for ref in prompts)
