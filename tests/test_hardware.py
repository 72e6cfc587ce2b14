"""GPU/model presets, parameter counts, KV sizing and capacity planning."""
import pytest
from pydantic import ValidationError

from sim.hardware import (
    GPU_PRESETS,
    MODEL_PRESETS,
    GiB,
    get_gpu,
    get_model,
    kv_bytes_per_token,
    kv_bytes_per_token_per_gpu,
    kv_pages_for,
    weight_bytes_per_gpu,
)


@pytest.mark.parametrize("name, billions", [
    ("Llama-3.1-8B", 8.03), ("Llama-3.1-70B", 70.55), ("Llama-2-7B", 6.74), ("SmolLM2-135M", 0.1345)])
def test_parameter_counts_match_published_sizes(name, billions):
    assert get_model(name).num_params / 1e9 == pytest.approx(billions, rel=2e-3)


def test_presets_are_known():
    assert {"A100-80G", "H100-SXM", "H200"} <= set(GPU_PRESETS)
    assert {"Llama-3.1-8B", "Llama-3.1-70B", "Llama-2-7B", "SmolLM2-135M", "tiny-llama"} <= set(MODEL_PRESETS)
    tiny = get_model("tiny-llama")
    assert (tiny.num_layers, tiny.hidden_size, tiny.num_heads, tiny.num_kv_heads, tiny.head_dim,
            tiny.ffn_size, tiny.vocab_size) == (2, 64, 4, 2, 16, 128, 256)
    assert get_model("SmolLM2-135M").tied_embeddings


def test_unknown_preset_lists_known_names():
    with pytest.raises(ValueError, match="unknown model 'Llama-9'.*Llama-3.1-8B.*tiny-llama"):
        get_model("Llama-9")
    with pytest.raises(ValueError, match="unknown GPU 'B300'.*A100-80G.*H100-SXM.*H200"):
        get_gpu("B300")


def test_inline_model_dict_is_validated():
    m = get_model({"name": "x", "num_layers": 4, "hidden_size": 128, "num_heads": 8, "num_kv_heads": 2,
                   "ffn_size": 256, "vocab_size": 1000})
    assert m.head_dim == 16
    with pytest.raises(ValidationError, match="num_layers"):
        get_model({"name": "x", "num_layers": 0, "hidden_size": 128, "num_heads": 8, "num_kv_heads": 2,
                   "ffn_size": 256, "vocab_size": 1000})
    with pytest.raises(ValidationError, match="multiple of num_kv_heads"):
        get_model({"name": "x", "num_layers": 1, "hidden_size": 128, "num_heads": 8, "num_kv_heads": 3,
                   "ffn_size": 256, "vocab_size": 1000})


def test_kv_bytes_per_token():
    m = get_model("Llama-3.1-8B")
    assert kv_bytes_per_token(m) == 2 * 32 * 8 * 128 * 2 == 131072
    assert kv_bytes_per_token_per_gpu(m, 2) == 65536
    # 8 KV heads over 16 ranks: each rank keeps one replicated head.
    assert kv_bytes_per_token_per_gpu(m, 16) == 2 * 32 * 1 * 128 * 2
    assert kv_bytes_per_token(get_model("Llama-3.1-8B", dtype="fp8")) == 65536
    # The KV cache's dtype apart from the weights': FP8 weights with 16-bit KV, and the reverse.
    fp8_weights = get_model("Llama-3.1-8B", dtype="fp8").model_copy(update={"kv_dtype": "bf16"})
    assert kv_bytes_per_token(fp8_weights) == 131072
    fp8_kv = get_model({**m.model_dump(), "kv_dtype": "fp8"})
    assert kv_bytes_per_token_per_gpu(fp8_kv, 2) == 32768
    assert weight_bytes_per_gpu(fp8_kv) == weight_bytes_per_gpu(m)


def test_weights_and_pages():
    gpu, m = get_gpu("H100-SXM"), get_model("Llama-3.1-8B")
    assert weight_bytes_per_gpu(m) / GiB == pytest.approx(8.03e9 * 2 / GiB, rel=1e-3)
    assert weight_bytes_per_gpu(m, 2) == pytest.approx(weight_bytes_per_gpu(m) / 2, rel=1e-4)
    pages = kv_pages_for(gpu, m, tp=1, page_size=16)
    free = gpu.memory_bytes * 0.9 - weight_bytes_per_gpu(m) - 2 * GiB
    assert pages == int(free // (16 * 131072))
    assert 25_000 < pages < 30_000  # ~57 GiB of KV
    # TP doubles the KV room per engine (half the weights and half the KV per GPU).
    assert kv_pages_for(gpu, m, tp=2, page_size=16) > 2 * pages
    assert kv_pages_for(get_gpu("H200"), m, 1, 16) > pages
    with pytest.raises(ValueError, match="no room for KV"):
        kv_pages_for(gpu, get_model("Llama-3.1-70B"), tp=1, page_size=16)
