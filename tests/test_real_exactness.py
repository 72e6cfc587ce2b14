"""Real engines give bit-identical greedy tokens under every strategy (tiny random model, CPU,
batch-invariant mode): one engine, round robin and vLLM's balancer over two, PD 1P1D, balanced PD, PD with a prefix
cache hit, and generation after migrating a context. Every run ends with zero pages in use on
every engine. Two engine processes serve the whole module."""
from __future__ import annotations

import pytest
from real_helpers import max_tokens_of, prompts, reference, requests, run, serve_checked, tokens_of

from core_api.types import Request, SamplingParams
from real.cluster import RealCluster, check_no_leaks
from real.loading import load_model
from strategies.migration import context_request, migrate_context

# A 64-token step budget chunks the longer prompts' prefill (and their remote_send).
ENGINE = {"model": "tiny", "num_pages": 256, "page_size": 16, "max_num_batched_tokens": 64}


@pytest.fixture(scope="module")
def cluster():
    with RealCluster.local(2, **ENGINE) as c:
        yield c


@pytest.fixture(scope="module")
def model():
    return load_model("tiny", batch_invariant=True)


def check(result, model, seed: int) -> None:
    """Tokens of every record equal the reference run of its prompt alone."""
    ps = prompts(seed)
    want = reference(model, [Request(r.request_id, ps[r.request_id.partition("-")[2]],
                                     SamplingParams(max_tokens=r.max_tokens)) for r in result.records])
    assert tokens_of(result) == want


def test_prompt_set_is_varied():
    ps = prompts()
    assert len(ps) >= 16
    assert len({len(p) for p in ps.values()}) >= 12
    assert {max_tokens_of(i) for i in range(len(ps))} == set(range(1, 10))


async def _strategy(cluster, seed, name, params, only=None):
    async with cluster.session() as engines:
        chosen = [engines[only]] if only else engines.values()
        return await serve_checked(chosen, requests(name, seed), name, params)


def test_one_engine(cluster, model):
    check(run(_strategy(cluster, 0, "round_robin", {}, only="e0")), model, 0)


def test_round_robin_two_engines(cluster, model):
    result = run(_strategy(cluster, 1, "round_robin", {}))
    check(result, model, 1)
    assert {r.tags["engine"] for r in result.records} == {"e0", "e1"}


def test_vllm_dp_two_engines(cluster, model):
    result = run(_strategy(cluster, 6, "vllm_dp", {"stats_interval_s": 0.0}))
    check(result, model, 6)
    assert {r.tags["engine"] for r in result.records} == {"e0", "e1"}


def test_pd_1p1d(cluster, model):
    result = run(_strategy(cluster, 2, "pd", {"prefill": ["e0"], "decode": ["e1"]}))
    check(result, model, 2)
    sent = [r for r in result.records if r.tags.get("prefill") == "e0"]
    assert len(sent) >= 15  # every prompt longer than one token crossed engines
    assert result.engine_stats["e0"]["kv_bytes_sent"] > 0
    assert result.engine_stats["e1"]["kv_bytes_received"] == result.engine_stats["e0"]["kv_bytes_sent"]


def test_balanced_pd(cluster, model):
    result = run(_strategy(cluster, 3, "balanced_pd", {"ratio": 0.3, "prefill": ["e0"], "decode": ["e1"]}))
    check(result, model, 3)
    assert any(r.tags["split"] % 16 for r in result.records)  # some splits cut a page in two


async def _pd_twice(cluster):
    async with cluster.session() as engines:
        params = {"prefill": ["e0"], "decode": ["e1"]}
        first = await serve_checked(engines.values(), requests("first", 6), "pd", params)
        again = await serve_checked(engines.values(), requests("again", 6), "pd", params)
        return first, again


def test_pd_with_prefix_cache_hit(cluster, model):
    first, again = run(_pd_twice(cluster))
    check(first, model, 6)
    check(again, model, 6)
    hits = [r for r in again.records if r.tags["matched"] > 0]
    assert len(hits) >= 10  # the decode engine cached the prompts of the first pass
    assert any(r.tags["prefill"] is None for r in again.records)  # fully cached: no transfer at all


async def _migrated(cluster, model):
    """Compute each prompt on e0, migrate its context to e1, then generate on e1."""
    ps = prompts(4)
    async with cluster.session() as engines:
        e0, e1 = engines["e0"], engines["e1"]
        out, moved = {}, 0
        for i, (name, prompt) in enumerate(ps.items()):
            req = Request(f"mig-{name}", prompt, SamplingParams(max_tokens=max_tokens_of(i)))
            async for _ in e0.start_generate(Request(f"warm-{name}", prompt, SamplingParams(max_tokens=1))):
                pass
            before = await e1.cached_prefix_len(req)
            cached = await migrate_context(context_request(f"ctx-{name}", prompt), e0, e1)
            assert await e1.cached_prefix_len(req) == cached >= before
            moved += cached - before
            tokens = []
            async for chunk in e1.start_generate(req):
                tokens += chunk.token_ids
            out[req.id] = (prompt, req.sampling.max_tokens, tokens)
        stats = await check_no_leaks([e0, e1])
        return out, moved, stats


def test_generation_after_migration(cluster, model):
    from real.reference import greedy_generate

    out, moved, stats = run(_migrated(cluster, model))
    assert moved >= 16 * 10  # most prompts had at least one full page to move
    assert stats["e1"]["prefix_hit_tokens"] >= moved
    for rid, (prompt, n, tokens) in out.items():
        assert tokens == greedy_generate(model, prompt.tolist(), n), rid


async def _sampled(cluster):
    """Temperature sampling is seeded per request: same tokens on one engine and through PD."""
    ps = prompts(5)
    reqs = [Request(f"t{i}", p, SamplingParams(max_tokens=6, temperature=0.8, top_p=0.9, seed=i))
            for i, p in enumerate(list(ps.values())[:8])]
    async with cluster.session() as engines:
        alone = await serve_checked([engines["e0"]], reqs, "round_robin")
        pd = await serve_checked(engines.values(), reqs, "pd", {"prefill": ["e1"], "decode": ["e0"]})
    return tokens_of(alone), tokens_of(pd)


def test_seeded_sampling_is_reproducible_across_engines(cluster):
    alone, pd = run(_sampled(cluster))
    assert alone == pd
    assert any(len(set(t)) > 1 for t in alone.values())
