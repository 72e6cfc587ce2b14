"""Rotary position embedding (HF "rotate_half" layout) with optional Llama-3 frequency scaling.

cos/sin come from a table computed once per model (in float64, rounded to the model dtype)
and are looked up by position. A lookup is exact, so a token's rotation has the same bits
whatever batch or prefill chunk it arrives in, and in every engine process; computing
cos/sin per batch would not guarantee that (vectorised and scalar tails round differently).
"""
from __future__ import annotations

import math

import torch

from real.model_config import LlamaConfig


def inv_frequencies(config: LlamaConfig) -> torch.Tensor:
    """Per-pair rotation frequencies [head_dim / 2] (float64), Llama-3 scaled if configured.

    Llama-3 scaling (as in Meta's reference and HF `_compute_llama3_parameters`): wavelengths
    shorter than original_ctx / high_freq_factor are kept, longer than original_ctx /
    low_freq_factor are divided by `factor`, and the band between is interpolated smoothly.
    """
    dim = config.head_dim
    inv = 1.0 / (config.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    s = config.rope_scaling
    if s is None:
        return inv
    low_wavelen = s.original_max_position_embeddings / s.low_freq_factor
    high_wavelen = s.original_max_position_embeddings / s.high_freq_factor
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > low_wavelen, inv / s.factor, inv)
    smooth = (s.original_max_position_embeddings / wavelen - s.low_freq_factor) / (
        s.high_freq_factor - s.low_freq_factor
    )
    smoothed = (1 - smooth) * scaled / s.factor + smooth * scaled
    medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
    return torch.where(medium, smoothed, scaled)


class RotaryTable:
    """cos/sin for every position up to max_position_embeddings, shape [max_pos, head_dim]."""

    def __init__(self, config: LlamaConfig, dtype: torch.dtype, device: torch.device | str = "cpu"):
        pos = torch.arange(config.max_position_embeddings, dtype=torch.float64)
        freqs = torch.outer(pos, inv_frequencies(config))
        emb = torch.cat([freqs, freqs], dim=-1)
        self.cos = emb.cos().to(dtype=dtype, device=device)
        self.sin = emb.sin().to(dtype=dtype, device=device)

    def to(self, device: torch.device | str) -> RotaryTable:
        self.cos, self.sin = self.cos.to(device), self.sin.to(device)
        return self

    def apply(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate x [T, heads, head_dim] by each row's position [T]."""
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin
