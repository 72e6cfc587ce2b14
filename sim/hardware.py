"""GPU and model specs: the numbers a roofline cost model and KV capacity planning need.

Presets use public datasheet figures, dense (not 2:4 sparse) throughput. NVLink/PCIe
bandwidth is per direction (datasheets quote the bidirectional sum; a transfer only uses one
direction). Memory is what `nvidia-smi` reports as total, since that is what an engine can
actually allocate from.

KV accounting, defined once here so every caller agrees:
- `kv_bytes_per_token(model)`: bytes of K and V for one token in the whole ENGINE (all layers,
  all KV heads). This is what a KV transfer moves and what a page holds, per token.
- `kv_bytes_per_token_per_gpu(model, tp)`: the share each of the engine's tp GPUs stores. KV
  heads are split across TP ranks; when tp > kv_heads they are replicated (each rank keeps one).
"""
from __future__ import annotations

import os
import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MiB = 1 << 20
GiB = 1 << 30
DTYPE_BYTES = {"bf16": 2, "fp8": 1}
# Activation/workspace memory kept free per GPU (cuBLAS workspace, logits, CUDA graphs).
DEFAULT_ACTIVATION_RESERVE_BYTES = 2 * GiB


class GPUSpec(BaseModel):
    """Peak throughputs of one GPU. peak_fp8_flops=None: no FP8 tensor cores (runs at bf16 peak)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    peak_bf16_flops: float = Field(gt=0)
    peak_fp8_flops: float | None = Field(default=None, gt=0)
    hbm_bandwidth_Bps: float = Field(gt=0)
    memory_bytes: int = Field(gt=0)
    nvlink_bandwidth_Bps: float = Field(gt=0, description="per direction")
    pcie_bandwidth_Bps: float = Field(gt=0, description="per direction")
    device_names: tuple[str, ...] = Field(default=(), description="names torch.cuda reports for this GPU")

    def peak_flops(self, dtype: str) -> float:
        if dtype == "fp8" and self.peak_fp8_flops is not None:
            return self.peak_fp8_flops
        return self.peak_bf16_flops


GPU_PRESETS: dict[str, GPUSpec] = {
    g.name: g
    for g in (
        # A100 SXM4 80GB: 312 TFLOPS bf16 dense, no FP8, HBM2e 2039 GB/s, NVLink3 600 GB/s total.
        GPUSpec(name="A100-80G", peak_bf16_flops=312e12, peak_fp8_flops=None, hbm_bandwidth_Bps=2.039e12,
                memory_bytes=81920 * MiB, nvlink_bandwidth_Bps=300e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA A100-SXM4-80GB",)),
        # A100 PCIe 80GB: A100 compute, HBM2e 1935 GB/s. NVLink bridges join pairs at most, so TP
        # beyond two GPUs talks over PCIe 4.0 x16 (32 GB/s per direction): priced as PCIe.
        GPUSpec(name="A100-80G-PCIe", peak_bf16_flops=312e12, peak_fp8_flops=None, hbm_bandwidth_Bps=1.935e12,
                memory_bytes=81920 * MiB, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA A100 80GB PCIe",)),
        # A100 40GB (SXM4 and PCIe): A100 compute, HBM2 1555 GB/s, NVLink3 600 GB/s total (SXM4).
        GPUSpec(name="A100-40G", peak_bf16_flops=312e12, peak_fp8_flops=None, hbm_bandwidth_Bps=1.555e12,
                memory_bytes=40960 * MiB, nvlink_bandwidth_Bps=300e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA A100-SXM4-40GB", "NVIDIA A100-PCIE-40GB")),
        # A10: 125 TFLOPS bf16 dense, no FP8, GDDR6 600 GB/s, 24 GB; PCIe 4.0 x16, no NVLink.
        GPUSpec(name="A10", peak_bf16_flops=125e12, peak_fp8_flops=None, hbm_bandwidth_Bps=600e9,
                memory_bytes=23028 * MiB, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA A10",)),
        # L4: 121 TFLOPS bf16 / 242.5 fp8 dense, GDDR6 300 GB/s, 24 GB; PCIe 4.0 x16, no NVLink.
        GPUSpec(name="L4", peak_bf16_flops=121e12, peak_fp8_flops=242.5e12, hbm_bandwidth_Bps=300e9,
                memory_bytes=23034 * MiB, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA L4",)),
        # L40S: 362.05 TFLOPS bf16 / 733 fp8 dense, GDDR6 864 GB/s, 48 GB; PCIe 4.0 x16, no NVLink.
        GPUSpec(name="L40S", peak_bf16_flops=362.05e12, peak_fp8_flops=733e12, hbm_bandwidth_Bps=864e9,
                memory_bytes=46068 * MiB, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA L40S",)),
        # L40: 181.05 TFLOPS bf16 / 362 fp8 dense, GDDR6 864 GB/s, 48 GB; PCIe 4.0 x16, no NVLink.
        GPUSpec(name="L40", peak_bf16_flops=181.05e12, peak_fp8_flops=362e12, hbm_bandwidth_Bps=864e9,
                memory_bytes=46068 * MiB, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA L40",)),
        # RTX 6000 Ada Generation (Ada whitepaper): 364.2 TFLOPS bf16 / 728.5 fp8 dense tensor with
        # FP32 accumulate, GDDR6 960 GB/s, 48 GB; PCIe 4.0 x16, no NVLink.
        GPUSpec(name="RTX6000Ada", peak_bf16_flops=364.2e12, peak_fp8_flops=728.5e12, hbm_bandwidth_Bps=960e9,
                memory_bytes=49140 * MiB, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA RTX 6000 Ada Generation",)),
        # RTX A6000 (Ampere whitepaper): 154.8 TFLOPS bf16 dense tensor with FP32 accumulate, no
        # FP8, GDDR6 768 GB/s, 48 GB; an NVLink bridge joins a pair (112.5 GB/s total): priced as PCIe 4.0.
        GPUSpec(name="RTXA6000", peak_bf16_flops=154.8e12, peak_fp8_flops=None, hbm_bandwidth_Bps=768e9,
                memory_bytes=49140 * MiB, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA RTX A6000",)),
        # H100 SXM5: 989.4 TFLOPS bf16 / 1978.9 fp8 dense, HBM3 3.35 TB/s, NVLink4 900 GB/s total.
        GPUSpec(name="H100-SXM", peak_bf16_flops=989.4e12, peak_fp8_flops=1978.9e12, hbm_bandwidth_Bps=3.35e12,
                memory_bytes=81559 * MiB, nvlink_bandwidth_Bps=450e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA H100 80GB HBM3", "NVIDIA H100")),
        # H100 PCIe: 756 TFLOPS bf16 / 1513 fp8 dense, HBM2e 2.0 TB/s, 80 GB; PCIe 5.0 x16 (NVLink
        # bridges join pairs at most: priced as PCIe).
        GPUSpec(name="H100-PCIe", peak_bf16_flops=756e12, peak_fp8_flops=1513e12, hbm_bandwidth_Bps=2.0e12,
                memory_bytes=81559 * MiB, nvlink_bandwidth_Bps=64e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA H100 PCIe",)),
        # H100 NVL: 835 TFLOPS bf16 / 1671 fp8 dense, HBM3 3.9 TB/s, 94 GB (nominal); NVLink bridge
        # 600 GB/s total between the two GPUs of a pair.
        GPUSpec(name="H100-NVL", peak_bf16_flops=835e12, peak_fp8_flops=1671e12, hbm_bandwidth_Bps=3.9e12,
                memory_bytes=94 * 10**9, nvlink_bandwidth_Bps=300e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA H100 NVL",)),
        # GH200 (96 GB HBM3): H100 compute, HBM3 4.0 TB/s, NVLink4 900 GB/s total.
        GPUSpec(name="GH200", peak_bf16_flops=989.4e12, peak_fp8_flops=1978.9e12, hbm_bandwidth_Bps=4.0e12,
                memory_bytes=96 * 10**9, nvlink_bandwidth_Bps=450e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA GH200 480GB",)),
        # H20: 148 TFLOPS bf16 / 296 fp8 dense, HBM3 4.0 TB/s, 96 GB (nominal), NVLink 900 GB/s total.
        GPUSpec(name="H20", peak_bf16_flops=148e12, peak_fp8_flops=296e12, hbm_bandwidth_Bps=4.0e12,
                memory_bytes=96 * 10**9, nvlink_bandwidth_Bps=450e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA H20",)),
        # H200 SXM: H100 compute, HBM3e 4.8 TB/s, 141 GB, NVLink4 900 GB/s total.
        GPUSpec(name="H200", peak_bf16_flops=989.4e12, peak_fp8_flops=1978.9e12, hbm_bandwidth_Bps=4.8e12,
                memory_bytes=143771 * MiB, nvlink_bandwidth_Bps=450e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA H200",)),
        # HGX B200 (per GPU): 2.25 PFLOPS bf16 / 4.5 fp8 dense, HBM3e 8 TB/s, 180 GB, NVLink5 1.8 TB/s total.
        GPUSpec(name="B200", peak_bf16_flops=2.25e15, peak_fp8_flops=4.5e15, hbm_bandwidth_Bps=8.0e12,
                memory_bytes=183359 * MiB, nvlink_bandwidth_Bps=900e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA B200",)),
        # GeForce RTX 4090 (Ada whitepaper): 165.2 TFLOPS bf16 / 330.3 fp8 dense tensor with FP32
        # accumulate, GDDR6X 1008 GB/s, 24 GB (total as the driver reports it). No NVLink: peers
        # talk over PCIe 4.0 x16 (32 GB/s per direction).
        GPUSpec(name="RTX4090", peak_bf16_flops=165.2e12, peak_fp8_flops=330.3e12, hbm_bandwidth_Bps=1.008e12,
                memory_bytes=25_250_627_584, nvlink_bandwidth_Bps=32e9, pcie_bandwidth_Bps=32e9,
                device_names=("NVIDIA GeForce RTX 4090",)),
        # GeForce RTX 5090 (RTX Blackwell whitepaper): 209.5 TFLOPS bf16 / 419 fp8 dense tensor with
        # FP32 accumulate, GDDR7 1792 GB/s, 32 GB. No NVLink: PCIe 5.0 x16 (64 GB/s per direction).
        GPUSpec(name="RTX5090", peak_bf16_flops=209.5e12, peak_fp8_flops=419e12, hbm_bandwidth_Bps=1.792e12,
                memory_bytes=32607 * MiB, nvlink_bandwidth_Bps=64e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA GeForce RTX 5090",)),
        # RTX PRO 6000 Blackwell Server Edition: 503.8 TFLOPS bf16 / 1007.6 fp8 dense tensor, GDDR7
        # 1597 GB/s, 96 GB. No NVLink: PCIe 5.0 x16 (64 GB/s per direction).
        GPUSpec(name="RTXPRO6000", peak_bf16_flops=503.8e12, peak_fp8_flops=1007.6e12, hbm_bandwidth_Bps=1.597e12,
                memory_bytes=97887 * MiB, nvlink_bandwidth_Bps=64e9, pcie_bandwidth_Bps=64e9,
                device_names=("NVIDIA RTX PRO 6000 Blackwell Server Edition",
                              "NVIDIA RTX PRO 6000 Blackwell Workstation Edition", "NVIDIA RTX PRO 6000")),
    )
}


def _plain(name: str) -> str:
    """A GPU name without case, punctuation or the vendor words, which reports vary in."""
    words = re.findall(r"[a-z0-9]+", name.lower())
    return "".join(w for w in words if w not in ("nvidia", "geforce"))


def gpu_for_device(device_name: str) -> GPUSpec | None:
    """The preset for a device name as torch/nvidia-smi report it (or a preset name), if any."""
    wanted = _plain(device_name)
    for gpu in GPU_PRESETS.values():
        if wanted == _plain(gpu.name) or any(wanted == _plain(d) for d in gpu.device_names):
            return gpu
    return None


class ModelSpec(BaseModel):
    """Shape of a Llama-family decoder (GQA attention, SwiGLU MLP, RMSNorm).

    dtype "fp8" means FP8 linear weights and KV cache (1 byte); embeddings and the LM head stay
    bf16, as in common FP8 checkpoints. `kv_dtype` sets the KV cache's apart from the weights (vLLM's
    `kv_cache_dtype`: an FP8 checkpoint keeps 16-bit KV unless told, and 16-bit weights can keep FP8 KV).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    num_layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    num_heads: int = Field(gt=0)
    num_kv_heads: int = Field(gt=0)
    head_dim: int | None = Field(default=None, gt=0, description="default hidden_size // num_heads")
    ffn_size: int = Field(gt=0)
    vocab_size: int = Field(gt=0)
    max_context: int = Field(default=131072, gt=0)
    tied_embeddings: bool = False
    qk_norm: bool = Field(default=False, description="RMSNorm on q and k per head (Qwen3)")
    dtype: Literal["bf16", "fp8"] = "bf16"
    kv_dtype: Literal["bf16", "fp8"] | None = Field(default=None, description="KV cache dtype; default: dtype")

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        if self.head_dim is None:
            if self.hidden_size % self.num_heads:
                raise ValueError("hidden_size must be divisible by num_heads when head_dim is not given")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads "
                             f"({self.num_kv_heads})")
        return self

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def kv_dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.kv_dtype or self.dtype]

    @property
    def linear_params_per_layer(self) -> int:
        """QKV + O projections + gate/up/down MLP: the weights every token multiplies through."""
        h, hd = self.hidden_size, self.head_dim
        qkv = h * (self.num_heads + 2 * self.num_kv_heads) * hd
        return qkv + self.num_heads * hd * h + 3 * h * self.ffn_size

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def lm_head_params(self) -> int:
        return self.vocab_size * self.hidden_size

    @property
    def num_params(self) -> int:
        """All parameters; a tied LM head shares the embedding matrix."""
        norms = (2 * self.num_layers + 1) * self.hidden_size
        head = 0 if self.tied_embeddings else self.lm_head_params
        return self.num_layers * self.linear_params_per_layer + self.embedding_params + head + norms


MODEL_PRESETS: dict[str, ModelSpec] = {
    m.name: m
    for m in (
        ModelSpec(name="Llama-3.1-8B", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                  ffn_size=14336, vocab_size=128256),
        ModelSpec(name="Llama-3.1-70B", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  ffn_size=28672, vocab_size=128256),
        ModelSpec(name="Llama-3-8B", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                  ffn_size=14336, vocab_size=128256, max_context=8192),
        ModelSpec(name="Llama-3-70B", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  ffn_size=28672, vocab_size=128256, max_context=8192),
        ModelSpec(name="Llama-2-13B", num_layers=40, hidden_size=5120, num_heads=40, num_kv_heads=40,
                  ffn_size=13824, vocab_size=32000, max_context=4096),
        ModelSpec(name="Llama-2-70B", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  ffn_size=28672, vocab_size=32000, max_context=4096),
        ModelSpec(name="Llama-2-7B", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=32,
                  ffn_size=11008, vocab_size=32000, max_context=4096),
        ModelSpec(name="Llama-3.2-1B", num_layers=16, hidden_size=2048, num_heads=32, num_kv_heads=8, head_dim=64,
                  ffn_size=8192, vocab_size=128256, tied_embeddings=True),
        ModelSpec(name="Llama-3.2-3B", num_layers=28, hidden_size=3072, num_heads=24, num_kv_heads=8, head_dim=128,
                  ffn_size=8192, vocab_size=128256, tied_embeddings=True),
        ModelSpec(name="Llama-3.3-70B", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  ffn_size=28672, vocab_size=128256),
        ModelSpec(name="Mistral-7B-v0.3", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                  ffn_size=14336, vocab_size=32768, max_context=32768),
        ModelSpec(name="Mistral-7B-v0.2", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                  ffn_size=14336, vocab_size=32000, max_context=32768),
        ModelSpec(name="Mistral-7B-v0.1", num_layers=32, hidden_size=4096, num_heads=32, num_kv_heads=8,
                  ffn_size=14336, vocab_size=32000, max_context=32768),
        # Qwen2.5 dense (q/k/v biases are too small to price); the three smallest tie their embeddings.
        ModelSpec(name="Qwen2.5-0.5B", num_layers=24, hidden_size=896, num_heads=14, num_kv_heads=2,
                  ffn_size=4864, vocab_size=151936, max_context=32768, tied_embeddings=True),
        ModelSpec(name="Qwen2.5-1.5B", num_layers=28, hidden_size=1536, num_heads=12, num_kv_heads=2,
                  ffn_size=8960, vocab_size=151936, max_context=32768, tied_embeddings=True),
        ModelSpec(name="Qwen2.5-3B", num_layers=36, hidden_size=2048, num_heads=16, num_kv_heads=2,
                  ffn_size=11008, vocab_size=151936, max_context=32768, tied_embeddings=True),
        ModelSpec(name="Qwen2.5-7B", num_layers=28, hidden_size=3584, num_heads=28, num_kv_heads=4,
                  ffn_size=18944, vocab_size=152064, max_context=32768),
        ModelSpec(name="Qwen2.5-14B", num_layers=48, hidden_size=5120, num_heads=40, num_kv_heads=8,
                  ffn_size=13824, vocab_size=152064, max_context=32768),
        ModelSpec(name="Qwen2.5-32B", num_layers=64, hidden_size=5120, num_heads=40, num_kv_heads=8,
                  ffn_size=27648, vocab_size=152064, max_context=32768),
        ModelSpec(name="Qwen2.5-72B", num_layers=80, hidden_size=8192, num_heads=64, num_kv_heads=8,
                  ffn_size=29568, vocab_size=152064, max_context=32768),
        # Qwen3 dense: QK-norm, head_dim 128 whatever the width; the small ones tie their embeddings.
        ModelSpec(name="Qwen3-0.6B", num_layers=28, hidden_size=1024, num_heads=16, num_kv_heads=8, head_dim=128,
                  ffn_size=3072, vocab_size=151936, max_context=40960, qk_norm=True, tied_embeddings=True),
        ModelSpec(name="Qwen3-1.7B", num_layers=28, hidden_size=2048, num_heads=16, num_kv_heads=8, head_dim=128,
                  ffn_size=6144, vocab_size=151936, max_context=40960, qk_norm=True, tied_embeddings=True),
        ModelSpec(name="Qwen3-4B", num_layers=36, hidden_size=2560, num_heads=32, num_kv_heads=8, head_dim=128,
                  ffn_size=9728, vocab_size=151936, max_context=40960, qk_norm=True, tied_embeddings=True),
        ModelSpec(name="Qwen3-8B", num_layers=36, hidden_size=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                  ffn_size=12288, vocab_size=151936, max_context=40960, qk_norm=True),
        ModelSpec(name="Qwen3-14B", num_layers=40, hidden_size=5120, num_heads=40, num_kv_heads=8, head_dim=128,
                  ffn_size=17408, vocab_size=151936, max_context=40960, qk_norm=True),
        ModelSpec(name="Qwen3-32B", num_layers=64, hidden_size=5120, num_heads=64, num_kv_heads=8, head_dim=128,
                  ffn_size=25600, vocab_size=151936, max_context=40960, qk_norm=True),
        ModelSpec(name="SmolLM2-135M", num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3,
                  ffn_size=1536, vocab_size=49152, max_context=8192, tied_embeddings=True),
        # Not a real checkpoint: the seeded random test model real/ builds for CPU tests.
        ModelSpec(name="tiny-llama", num_layers=2, hidden_size=64, num_heads=4, num_kv_heads=2,
                  ffn_size=128, vocab_size=256, max_context=2048),
    )
}


def _lookup(table: dict, name: str, what: str):
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; known: {', '.join(sorted(table))}") from None


def get_gpu(spec: str | dict | GPUSpec) -> GPUSpec:
    """A preset name, an inline dict (validated), or a GPUSpec."""
    if isinstance(spec, GPUSpec):
        return spec
    if isinstance(spec, dict):
        return GPUSpec.model_validate(spec)
    return _lookup(GPU_PRESETS, spec, "GPU")


def get_model(spec: str | dict | ModelSpec, dtype: str | None = None) -> ModelSpec:
    """A preset name (or a Hugging Face id whose last part is one, e.g. "meta-llama/Llama-3.1-8B"),
    the path of a Hugging Face config.json or model directory, an inline dict (validated), or a
    ModelSpec; `dtype` overrides its dtype."""
    if isinstance(spec, ModelSpec):
        model = spec
    elif isinstance(spec, dict):
        model = ModelSpec.model_validate(spec)
    elif spec in MODEL_PRESETS or spec.rsplit("/", 1)[-1] in MODEL_PRESETS:
        model = MODEL_PRESETS[spec.rsplit("/", 1)[-1]]
    elif spec.endswith(".json") or os.path.isdir(spec):
        from sim.hf_config import load_hf_config

        model = load_hf_config(spec)
    else:
        model = _named_model(spec)
    if dtype is not None and dtype != model.dtype:
        model = ModelSpec.model_validate({**model.model_dump(), "dtype": dtype})
    return model


def _named_model(name: str) -> ModelSpec:
    """A checkpoint by its Hugging Face id: its config.json from the local hub cache, else the
    preset of its base model (sim.model_names)."""
    from sim.hf_config import load_hf_config
    from sim.model_names import hub_cache_config, preset_for

    cached = hub_cache_config(name)
    if cached is not None:
        return load_hf_config(cached)
    preset = preset_for(name, MODEL_PRESETS)
    if preset is None:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(MODEL_PRESETS))} (and their "
                         f"fine-tunes, e.g. -Instruct), a Hugging Face id in the local hub cache, or the "
                         f"path of a Hugging Face config.json or model directory")
    return MODEL_PRESETS[preset]


def weight_bytes_per_gpu(model: ModelSpec, tp: int = 1, include_lm_head: bool = True) -> float:
    """Weight bytes on one TP rank: linear layers, embedding and LM head are sharded, norms replicated."""
    linear = model.num_layers * model.linear_params_per_layer * model.dtype_bytes
    embed = model.embedding_params * 2
    head = model.lm_head_params * 2 if include_lm_head and not model.tied_embeddings else 0
    norms = (2 * model.num_layers + 1) * model.hidden_size * 2
    return (linear + embed + head) / tp + norms


def kv_bytes_per_token(model: ModelSpec) -> int:
    """K and V bytes of one token for the whole engine (what a transfer moves per token)."""
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * model.kv_dtype_bytes


def kv_heads_per_gpu(model: ModelSpec, tp: int) -> float:
    """KV heads each rank stores: split across ranks, replicated once tp exceeds them."""
    return max(model.num_kv_heads / tp, 1.0)


def kv_bytes_per_token_per_gpu(model: ModelSpec, tp: int = 1) -> float:
    """The share of one token's KV that each of the engine's tp GPUs stores (and reads)."""
    return 2 * model.num_layers * kv_heads_per_gpu(model, tp) * model.head_dim * model.kv_dtype_bytes


def kv_pages_for(gpu: GPUSpec, model: ModelSpec, tp: int, page_size: int, mem_util: float = 0.9,
                 activation_reserve_bytes: float = DEFAULT_ACTIVATION_RESERVE_BYTES) -> int:
    """KV pages an engine of tp GPUs holds: per GPU, mem_util * memory - weights - reserve.

    Every rank holds its share of every page, so the engine's page count is what fits on one rank.
    """
    if tp < 1 or page_size < 1 or not 0 < mem_util <= 1:
        raise ValueError(f"need tp >= 1, page_size >= 1, 0 < mem_util <= 1 (got {tp}, {page_size}, {mem_util})")
    free = gpu.memory_bytes * mem_util - weight_bytes_per_gpu(model, tp) - activation_reserve_bytes
    pages = int(free // (page_size * kv_bytes_per_token_per_gpu(model, tp)))
    if pages < 1:
        raise ValueError(f"{model.name} ({model.dtype}) at tp={tp} leaves no room for KV on {gpu.name}: "
                         f"{weight_bytes_per_gpu(model, tp) / GiB:.1f} GiB weights per GPU, "
                         f"{gpu.memory_bytes * mem_util / GiB:.1f} GiB usable")
    return pages
