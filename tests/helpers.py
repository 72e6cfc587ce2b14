"""Small builders shared by tests (no test depends on ../shared)."""
from __future__ import annotations

import numpy as np

from core_api.types import Request, SamplingParams
from core_api.workload import Workload
from sim.config import ClusterConfig, EngineConfig, StrategyConfig


def make_request(rid: str, prompt_len: int, max_tokens: int = 4, arrival: float = 0.0, seed: int = 0,
                 prompt: np.ndarray | None = None) -> Request:
    if prompt is None:
        prompt = np.random.default_rng(seed).integers(0, 1000, prompt_len, dtype=np.int32)
    return Request(rid, prompt, SamplingParams(max_tokens=max_tokens, ignore_eos=True), arrival_time=arrival)


def small_cluster(n: int = 2, strategy: str = "round_robin", params: dict | None = None, **engine) -> ClusterConfig:
    engine.setdefault("num_pages", 2048)
    return ClusterConfig(
        engines=[EngineConfig(count=n, **engine)],
        strategy=StrategyConfig(name=strategy, params=params or {}),
    )


def workload_of(requests) -> Workload:
    return Workload(sorted(requests, key=lambda r: r.arrival_time), name="test")
