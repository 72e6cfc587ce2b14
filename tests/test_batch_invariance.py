"""Batch-invariant mode: a sequence's logits are bit-identical whether it runs alone, in a
batch with others, with its prefill chunked, or on top of prefix pages computed earlier by
another sequence. This is what makes single-engine, PD and migration runs token-exact."""
from __future__ import annotations

import pytest
import torch
from paged_driver import Driver

from real.model import LlamaModel
from real.model_config import LlamaConfig
from real.reference import greedy_generate

N_GEN = 5


def prompts() -> dict[str, list[int]]:
    g = torch.Generator().manual_seed(7)
    base = torch.randint(0, 256, (40,), generator=g).tolist()
    other = {f"r{n}": torch.randint(0, 256, (n,), generator=g).tolist() for n in (1, 5, 13, 17, 31)}
    return {"a": base[:24], "b": base[:8] + [3, 1, 4, 1, 5], "c": base, **other}


@pytest.fixture(scope="module")
def model() -> LlamaModel:
    return LlamaModel.from_random(LlamaConfig.preset("tiny"), seed=0, batch_invariant=True)


@pytest.fixture(scope="module")
def alone(model) -> dict[str, list[torch.Tensor]]:
    out = {}
    for key, prompt in prompts().items():
        d = Driver(model)
        d.add(key, prompt)
        d.run(N_GEN)
        out[key] = d.seqs[key].logits
        assert d.seqs[key].generated == greedy_generate(model, prompt, N_GEN)
    return out


def assert_same_bits(driver: Driver, alone: dict[str, list[torch.Tensor]]) -> None:
    for key, seq in driver.seqs.items():
        ref = alone[key.split("@")[0]]
        assert len(seq.logits) == len(ref)
        for step, (got, want) in enumerate(zip(seq.logits, ref)):
            assert torch.equal(got, want), f"{key} step {step}: max diff {(got - want).abs().max()}"


def test_batched_together(model, alone):
    d = Driver(model, seed=1)
    for key, prompt in prompts().items():
        d.add(key, prompt)
    d.run(N_GEN)
    assert_same_bits(d, alone)


def test_chunked_prefill_staggered_with_decodes(model, alone):
    """Sequences join at different steps, so prefill chunks share forwards with decodes."""
    d = Driver(model, page_size=8, seed=2)
    chunks = {"a": 3, "c": 7, "r31": 5, "r17": 1, "b": 4}
    items = list(prompts().items())
    for i, (key, prompt) in enumerate(items):
        d.add(key, prompt)
        d.step({k: chunks.get(k, 10**9) for k, s in d.seqs.items() if len(s.generated) < N_GEN})
    d.run(N_GEN, chunks)
    assert_same_bits(d, alone)


def test_prefix_pages_reused(model, alone):
    """'b' and a second copy of 'c' start from pages that 'a' / 'c' filled earlier."""
    p = prompts()
    d = Driver(model, page_size=4, seed=3)
    d.add("a", p["a"])
    d.add("c", p["c"])
    d.run(1, {"c": 6})
    d.add("b", p["b"], prefix_from="a", prefix_len=8)
    d.add("c@copy", p["c"], prefix_from="c", prefix_len=36)
    d.add("r13", p["r13"])
    d.run(N_GEN, {"r13": 2})
    assert_same_bits(d, alone)


def test_default_mode_close_but_not_required_exact(alone):
    """Without the mode results agree to float tolerance; bits may differ (that is the point)."""
    fast = LlamaModel.from_random(LlamaConfig.preset("tiny"), seed=0, batch_invariant=False)
    d = Driver(fast, seed=1)
    for key, prompt in prompts().items():
        d.add(key, prompt)
    d.run(1)
    for key, seq in d.seqs.items():
        torch.testing.assert_close(seq.logits[0], alone[key][0], rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_smollm2_batch_invariant():
    from real.tokenizer import smollm2_tokenizer

    tok = smollm2_tokenizer()
    m = LlamaModel.from_gguf(batch_invariant=True)
    p1, p2 = tok.encode("The capital of France is"), tok.encode("Once upon a time, in a land far away, there")
    ref = Driver(m, page_size=16)
    ref.add("x", p1)
    ref.run(3)
    d = Driver(m, page_size=4, seed=5)
    d.add("y", p2)
    d.add("x", p1)
    d.run(3, {"x": 2, "y": 3})
    assert d.seqs["x"].generated == ref.seqs["x"].generated
    for got, want in zip(d.seqs["x"].logits, ref.seqs["x"].logits):
        assert torch.equal(got, want)
