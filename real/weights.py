"""Weights in Hugging Face parameter names: seeded random, from an HF directory, and the
fusion into LlamaModel's layout. Every loader produces the HF names so one fusion (and one
shape check) serves them all."""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from real.model_config import LlamaConfig

LAYER_PARAMS = ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                "post_attention_layernorm", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def param_shapes(config: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter the model needs, by HF name (lm_head only when untied)."""
    h, f, q, kv = config.hidden_size, config.intermediate_size, config.q_size, config.kv_size
    per_layer = dict(zip(LAYER_PARAMS, [(h,), (q, h), (kv, h), (kv, h), (h, q), (h,), (f, h), (f, h), (h, f)]))
    shapes = {"model.embed_tokens.weight": (config.vocab_size, h), "model.norm.weight": (h,)}
    for i in range(config.num_layers):
        shapes.update({f"model.layers.{i}.{name}.weight": s for name, s in per_layer.items()})
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (config.vocab_size, h)
    return shapes


def random_state_dict(config: LlamaConfig, seed: int, device="cpu") -> dict[str, torch.Tensor]:
    """N(0, 1/fan_in) matrices, N(0, 1) embeddings, unit norms: activations stay O(1), so a
    random model's greedy tokens vary with the prompt. Drawn in float32 on `device` from a
    private generator (same seed and device -> same weights), then cast to config.dtype."""
    gen = torch.Generator(device=device).manual_seed(seed)
    dtype = getattr(torch, config.dtype)
    state = {}
    for name, shape in param_shapes(config).items():
        if len(shape) == 1:
            w = torch.ones(shape, device=device)
        else:
            std = 1.0 if name == "model.embed_tokens.weight" else shape[1] ** -0.5
            w = torch.randn(shape, generator=gen, device=device) * std
        state[name] = w.to(dtype)
    return state


def load_hf_dir(path: str | Path, dtype: str | None = None) -> tuple[LlamaConfig, dict[str, torch.Tensor]]:
    """config.json + *.safetensors of a Llama-family checkpoint, tensors on CPU."""
    from safetensors.torch import load_file

    path = Path(path)
    config = LlamaConfig.from_hf(json.loads((path / "config.json").read_text()), dtype)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {path}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return config, state


def fuse_state_dict(config: LlamaConfig, state: Mapping[str, torch.Tensor], device="cpu"):
    """Check names and shapes, cast to config.dtype, move to device, fuse per layer.

    Returns the LlamaModel constructor's (embed, layers, norm, lm_head) arguments.
    """
    from real.model import LlamaLayer

    shapes = param_shapes(config)
    missing = [n for n in shapes if n not in state]
    if missing:
        raise KeyError(f"checkpoint lacks {len(missing)} parameters, e.g. {missing[:3]}")
    dtype = getattr(torch, config.dtype)

    def get(name: str) -> torch.Tensor:
        w = state[name]
        if tuple(w.shape) != shapes[name]:
            raise ValueError(f"{name}: shape {tuple(w.shape)}, config expects {shapes[name]}")
        return w.to(device=device, dtype=dtype)

    layers = []
    for i in range(config.num_layers):
        p = f"model.layers.{i}."
        qkv = torch.cat([get(p + f"self_attn.{x}_proj.weight") for x in "qkv"])
        gate_up = torch.cat([get(p + "mlp.gate_proj.weight"), get(p + "mlp.up_proj.weight")])
        layers.append(LlamaLayer(get(p + "input_layernorm.weight"), qkv, get(p + "self_attn.o_proj.weight"),
                                 get(p + "post_attention_layernorm.weight"), gate_up, get(p + "mlp.down_proj.weight")))
    lm_head = None if config.tie_word_embeddings else get("lm_head.weight")
    return get("model.embed_tokens.weight"), layers, get("model.norm.weight"), lm_head
