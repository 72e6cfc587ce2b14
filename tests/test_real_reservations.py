"""Bursts through strategies where engines both send and receive, on real engines: every request
completes, its tokens equal one engine's, and no page is left used or reserved."""
from __future__ import annotations

import numpy as np
import pytest
from burst_strategies import BidirectionalPD, Chain
from real_helpers import reference, run, tokens_of

from core_api import strategy as registry
from core_api.types import Request, SamplingParams
from real.cluster import RealCluster
from real.loading import load_model


def burst(n: int, seed: int = 0) -> list[Request]:
    """n requests at t = 0, prompts of 20-200 tokens (a third share a 48-token prefix)."""
    rng = np.random.default_rng(seed)
    prefix = rng.integers(0, 256, 48, dtype=np.int32)
    out = []
    for i in range(n):
        own = rng.integers(0, 256, int(rng.integers(20, 200)), dtype=np.int32)
        prompt = np.concatenate([prefix, own]) if i % 3 == 0 else own
        out.append(Request(f"b{i}", prompt, SamplingParams(max_tokens=int(rng.integers(1, 8)))))
    return out


@pytest.fixture(autouse=True)
def _registered():
    registry.register("test_bidirectional_pd")(BidirectionalPD)
    registry.register("test_chain")(Chain)


def serve_burst(engines: int, strategy: str, reqs: list[Request], num_pages: int):
    from core_api.workload import Workload
    from real.cluster import check_no_leaks, run_workload

    async def go(cluster):
        async with cluster.session() as conns:
            result = await run_workload(list(conns.values()), Workload(reqs), strategy, {})
            stats = await check_no_leaks(list(conns.values()))
            return result, stats

    with RealCluster.local(engines, model="tiny", num_pages=num_pages, max_num_batched_tokens=256) as cluster:
        return run(go(cluster))


def check(result, reqs):
    bad = [(r.request_id, r.reason) for r in result.records if r.status != "ok"]
    assert not bad, bad[:3]
    assert tokens_of(result) == reference(load_model("tiny"), reqs)


@pytest.mark.parametrize("strategy, engines", [("test_bidirectional_pd", 2), ("test_chain", 3)])
def test_a_burst_under_memory_pressure_completes_exactly(strategy, engines):
    reqs = burst(100)
    result, stats = serve_burst(engines, strategy, reqs, num_pages=160)  # ~2,500 tokens of KV per engine
    check(result, reqs)
    assert all(s["pages"]["used"] == 0 and s["pages"]["reserved"] == 0 for s in stats.values())


@pytest.mark.slow
@pytest.mark.parametrize("strategy, engines", [("test_bidirectional_pd", 2), ("test_chain", 3)])
def test_a_burst_of_300_completes_exactly(strategy, engines):
    reqs = burst(300, seed=1)
    result, _ = serve_burst(engines, strategy, reqs, num_pages=400)
    check(result, reqs)
