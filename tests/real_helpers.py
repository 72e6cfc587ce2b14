"""Shared builders for the real-backend tests: prompts with shared prefixes, the reference
tokens they must produce, and a runner that serves a workload and checks pages afterwards."""
from __future__ import annotations

import asyncio

import numpy as np

from core_api.types import Request, SamplingParams
from core_api.workload import Workload
from real.cluster import check_no_leaks, run_workload
from real.reference import greedy_generate

# Lengths around page boundaries (16), a 1-token prompt, and prompts longer than the engines'
# token budget (chunked prefill); max_tokens from 1 to 9.
LENGTHS = [1, 2, 5, 15, 16, 17, 31, 32, 33, 47, 64, 65, 100, 150]
PREFIX_LEN = 40


def prompts(seed: int = 0) -> dict[str, np.ndarray]:
    """>= 16 prompts: varied lengths, and three groups of four sharing a 40-token prefix."""
    rng = np.random.default_rng(seed)
    out = {f"p{n}": rng.integers(0, 256, n, dtype=np.int32) for n in LENGTHS}
    for g in range(3):
        prefix = rng.integers(0, 256, PREFIX_LEN, dtype=np.int32)
        for k, tail in enumerate((1, 9, 24, 57)):
            out[f"g{g}t{k}"] = np.concatenate([prefix, rng.integers(0, 256, tail, dtype=np.int32)])
    return out


def max_tokens_of(i: int) -> int:
    return 1 + i % 9


def requests(tag: str, seed: int = 0, spread_s: float = 0.2) -> list[Request]:
    """The prompts as requests `{tag}-{name}`; half arrive at once, half spread over spread_s."""
    ps = prompts(seed)
    n = len(ps)
    return [Request(f"{tag}-{name}", prompt, SamplingParams(max_tokens=max_tokens_of(i)),
                    arrival_time=0.0 if i % 2 == 0 else spread_s * i / n)
            for i, (name, prompt) in enumerate(ps.items())]


def reference(model, reqs: list[Request]) -> dict[str, list[int]]:
    """Ground truth: each prompt alone, contiguous KV, one-shot prefill (real.reference)."""
    return {r.id: greedy_generate(model, r.prompt.tolist(), r.sampling.max_tokens) for r in reqs}


async def serve_checked(engines, reqs: list[Request], strategy: str, params: dict | None = None):
    """Run, then assert every request completed and no engine holds a used or reserved page."""
    result = await run_workload(list(engines), Workload(reqs), strategy, params or {})
    bad = [(r.request_id, r.status, r.reason) for r in result.records if r.status != "ok"]
    assert not bad, bad
    await check_no_leaks(list(engines))
    return result


def tokens_of(result) -> dict[str, list[int]]:
    return {r.request_id: r.token_ids for r in result.records}


def run(coro):
    return asyncio.run(coro)
