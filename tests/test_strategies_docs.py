"""docs/strategies.md's example strategy, run as written on both backends: the guide must not drift
from the code. Its long prompts go PD and short ones data parallel, with exact tokens on real
engines and no leaked page."""
from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np

from core_api.types import Request, SamplingParams
from core_api.workload import Workload

DOC = Path(__file__).resolve().parents[1] / "docs" / "strategies.md"


def _load_example() -> None:
    code = re.search(r"## A complete example\n\n```python\n(.*?)```", DOC.read_text(), re.DOTALL).group(1)
    # Running the documented code itself is the point: it registers the example strategy.
    exec(compile(code, str(DOC), "exec"), {"__name__": "docs_strategies_example"})  # noqa: S102


def _requests() -> list[Request]:
    rng = np.random.default_rng(0)
    return [Request(f"r{i}", rng.integers(0, 256, n, dtype=np.int32), SamplingParams(max_tokens=4),
                    arrival_time=0.01 * i) for i, n in enumerate((20, 90, 30, 120))]


def test_the_guides_example_runs_on_the_simulator():
    from core_api.strategy import known_strategies
    from sim.cluster import SimCluster
    from sim.config import ClusterConfig, EngineConfig, StrategyConfig

    if "docs_long_prompt_pd" not in known_strategies():
        _load_example()
    cluster = SimCluster(ClusterConfig(engines=[EngineConfig(count=2)],
                                       strategy=StrategyConfig(name="docs_long_prompt_pd", params={"threshold": 64})))
    result = cluster.run(Workload(_requests()))
    assert [r.status for r in result.records] == ["ok"] * 4
    assert [r.tags["mode"] for r in result.records] == ["dp", "pd", "dp", "pd"]
    cluster.check_no_leaks()


def test_the_guides_example_runs_on_real_engines_with_exact_tokens():
    from core_api.strategy import known_strategies
    from real.cluster import RealCluster, check_no_leaks, run_workload
    from real.reference import greedy_generate

    if "docs_long_prompt_pd" not in known_strategies():
        _load_example()
    reqs = _requests()

    async def go(cluster):
        async with cluster.session() as engines:
            result = await run_workload(list(engines.values()), Workload(reqs), "docs_long_prompt_pd",
                                        {"threshold": 64})
            await check_no_leaks(list(engines.values()))
            return result

    with RealCluster.local(2, num_pages=64) as cluster:
        result = asyncio.run(go(cluster))
    from real.loading import load_model

    model = load_model("tiny")
    for req, rec in zip(reqs, result.records):
        assert rec.status == "ok" and rec.token_ids == greedy_generate(model, req.prompt.tolist(), 4)
    assert [r.tags["mode"] for r in result.records] == ["dp", "pd", "dp", "pd"]
