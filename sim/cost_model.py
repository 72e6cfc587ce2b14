"""How long one engine step takes: the simulator's only notion of compute.

Two models behind one protocol:

- RooflineCostModel: from a GPU spec and a model spec. Each kind of kernel is a roofline term
  of a compute time FLOPs / (peak * eff_compute) and a memory time bytes / (HBM bw *
  eff_memory), combined as their sum less `overlap` x the smaller one (overlap=1 is the
  classic max(); the fitted default is 0.56, see below). Terms add up (kernels run one after
  another): linear layers (every token through every weight, weights read once per step),
  prefill attention, decode attention (streams the context's KV; beside a prefill chunk, once per
  query head: see mixed_kv_reread),
  elementwise ops (norms, RoPE, activation, residual: activation traffic), the LM head for
  sampled rows, and with TP > 1 two ring all-reduces per layer. Plus a fixed cost per step
  (scheduler, launch, sampling) and per layer (GEMM kernels have a floor of a few us).
- FittedCostModel: a linear model over StepFeatures with coefficients from a calibration
  profile (sim/profile.py), plus the profile's token curve where it has one (a step's time by
  its tokens, piecewise linear: calibration.fit).
(Measured per-layer tables are a third model: sim.layer_cost_model.)

Defaults fitted to every public GPU measurement the project has (`microserving calibrate roofline
--data shared/data`, calibration/roofline_fit.py; 5,514 observations): per-layer vLLM 0.19 profiles
composed into whole steps per rank, and their linear layers alone (RTX 4090, RTX PRO 6000;
Llama-3.1-8B, Qwen3-32B; TP 1-2), Vidur's linear-layer profiles (A100, H100; Llama-2-7B/70B; TP
1-8), Hugging Face layer timings on H100 (Llama-3.1-8B/70B; TP 1-4) and Splitwise's whole-model
prefill and decode times (Llama-2-70B on A100 and H100, TP 2-8). Each GPU is fitted its own GPU
efficiencies; the defaults are the typical GPU, the median of the four (0.794 of peak FLOP/s for
GEMMs, 0.933 of HBM bandwidth, 55.8% of the smaller roof hidden under the larger; decode rows
beside a prefill reading their KV for each further query head at 0.53 of an HBM read, the median
of the two GPUs that measured it), with vLLM's software factors (its attention kernels at 0.611 of peak, 44 us per layer per
step, no per-step constant); the other sources' software factors are fitted separately, since they
describe their engines, not the GPU (Splitwise's attention reaches 0.08 of peak). Error, as mean
absolute error over measurement groups: 12% on A100, 10% on H100, 13% on RTX 4090, 3% on RTX PRO
6000; with the GPU itself left out of the fit (what a GPU nobody profiled gets): 16%, 13%, 15%, 4%.
Per-GPU fits (`calibration/profiles/roofline-<gpu>.json`) do better on their GPU; measured layer
tables (sim.layer_cost_model) better still. Docs: docs/fidelity.md.
- All-reduce: bandwidth term 0.7 of NVLink fits NCCL kernel times from 4 MB to 64 MB within
  ~20% (Vidur's H100 all_reduce.csv); 20 us latency sits between NCCL's ~40 us floor below 4 MB
  and the 5-10 us of serving engines' custom all-reduce kernels.

Why so many small terms: decode is memory bound (weights + KV / HBM), long prefill compute
bound, and a simulator of disaggregation must get both regimes and the switch between them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol, runtime_checkable

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from core_api.step import StepFeatures
from sim.hardware import GPUSpec, ModelSpec, get_gpu, get_model, kv_bytes_per_token_per_gpu
from sim.interpolate import Table1D
from sim.profile import KNOWN_COEFFICIENTS, CostProfile, TokenCurve


@runtime_checkable
class CostModel(Protocol):
    def step_time(self, f: StepFeatures) -> float:
        """Seconds the step takes; 0.0 for an empty step."""
        ...

    def describe(self) -> dict:
        """JSON-able description echoed into RunResult (kind, gpu, model, tp, profile...)."""
        ...


def decode_contexts(f: StepFeatures, k: int) -> np.ndarray:
    """decode_context of k pure-decode steps from `f` on (each step adds one token per sequence),
    as floats: what step_time multiplies them as."""
    return (f.decode_context + f.decode_seqs * np.arange(k, dtype=np.int64)).astype(np.float64)

# A cost model may also offer `decode_step_times(f, k) -> np.ndarray`: step_time of k pure-decode
# steps from `f` on, bit for bit what k calls would give (the same float operations in the same
# order, element-wise), so the simulator prices a decode run in one call (sim.engine).


class RooflineEfficiency(BaseModel):
    """Fractions of peak each roof reaches, and fixed costs. Defaults: see the module docstring."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    compute: float = Field(default=0.794, gt=0, le=1, description="GEMM FLOP/s / peak")
    memory: float = Field(default=0.933, gt=0, le=1, description="achieved HBM bandwidth / peak")
    attention: float = Field(default=0.611, gt=0, le=1, description="attention FLOP/s / peak (the engine's kernels)")
    network: float = Field(default=0.7, gt=0, le=1, description="all-reduce bus bandwidth / NVLink")
    allreduce_latency_s: float = Field(default=20e-6, ge=0)
    layer_overhead_s: float = Field(default=44e-6, ge=0, description="per layer per step (kernel floors)")
    step_overhead_s: float = Field(default=0.0, ge=0, description="per step (scheduling, sampling)")
    overlap: float = Field(default=0.558, ge=0, le=1, description=(
        "share of the smaller roof hidden under the larger: 1 = classic max(), 0 = sum"))
    mixed_kv_reread: float = Field(default=0.53, ge=0, le=1, description=(
        "decode rows in a step that also prefills read their KV once per query head: what each read "
        "after the first costs, as a share of an HBM read (0: read once, as the decode kernel does)"))


class RooflineCostModel:
    """Per-GPU roofline of one engine of tp GPUs; constants folded at construction so that
    step_time is a dozen float operations (it runs once per simulated step)."""

    def __init__(self, gpu: GPUSpec | str | dict, model: ModelSpec | str | dict, tp: int = 1,
                 efficiency: RooflineEfficiency | Mapping | None = None):
        if tp < 1:
            raise ValueError(f"tp must be >= 1, got {tp}")
        self.gpu, self.model, self.tp = get_gpu(gpu), get_model(model), tp
        self.eff = RooflineEfficiency.model_validate(efficiency or {})
        g, m, e = self.gpu, self.model, self.eff
        L, h = m.num_layers, m.hidden_size
        flops = g.peak_flops(m.dtype) * e.compute
        bw = g.hbm_bandwidth_Bps * e.memory
        # Linear layers: 2 FLOPs per weight per token; the weights are read once per step.
        lin_params = L * m.linear_params_per_layer / tp
        self._s_lin_token = 2 * lin_params / flops
        self._s_lin_weights = lin_params * m.dtype_bytes / bw
        # Attention: QK^T and PV, 2 FLOPs per multiply-add each, per query-key pair per head dim,
        # in the KV cache's precision (FP8 weights beside 16-bit KV attend in 16 bits).
        attn_flops = g.peak_flops(m.kv_dtype or m.dtype) * e.attention
        self._s_attn_unit = 4 * L * m.num_heads * m.head_dim / tp / attn_flops
        self._s_kv_token = kv_bytes_per_token_per_gpu(m, tp) / bw
        # Decode rows batched with a prefill chunk: an engine that runs one attention kernel over
        # the whole batch (vLLM's varlen kernels) sends them down the prefill path, which reads a
        # KV head once for each query head of its group instead of once; L2 serves part of the
        # repeats, so each costs a share of an HBM read. vLLM 0.19's measured mixed batches took
        # 1.2-3.8x the two kernels apart, and Qwen3-32B's 8 query heads per KV head about twice
        # Llama-3.1-8B's 4 on the same GPU: the per-query-head reading. A model without grouped
        # heads reads each KV head once either way.
        group = m.num_heads / m.num_kv_heads
        self._s_kv_token_mixed = self._s_kv_token * (1 + (group - 1) * e.mixed_kv_reread)
        # Elementwise traffic per token per layer (2-byte activations): two RMSNorms (read +
        # write hidden), residual adds, RoPE on q and k, SwiGLU (read 2 x ffn, write ffn).
        q_k = (m.num_heads + m.num_kv_heads) * m.head_dim
        act_bytes = 2 * (4 * h + 6 * h + 2 * q_k / tp + 3 * m.ffn_size / tp)
        self._s_act_token = L * act_bytes / bw
        # LM head (bf16 even for fp8 models), vocab-parallel across ranks.
        head_params = m.lm_head_params / tp
        self._s_head_row = 2 * head_params / (g.peak_bf16_flops * e.compute)
        self._s_head_weights = head_params * 2 / bw
        # Two ring all-reduces per layer of tokens x hidden bf16 activations.
        if tp > 1:
            ring = 2 * (tp - 1) / tp
            self._s_ar_token = 2 * L * ring * h * 2 / (g.nvlink_bandwidth_Bps * e.network)
            self._s_ar_fixed = 2 * L * e.allreduce_latency_s
        else:
            self._s_ar_token = self._s_ar_fixed = 0.0
        self._s_fixed = e.step_overhead_s + L * e.layer_overhead_s
        self._overlap = e.overlap

    def _roof(self, a: float, b: float) -> float:
        """Compute time a and memory time b of one kernel: their sum less the overlapped part."""
        return a + b - self._overlap * min(a, b)

    def step_time(self, f: StepFeatures) -> float:
        tokens = f.prefill_tokens + f.decode_seqs
        if tokens == 0:
            return 0.0
        roof = self._roof
        t = self._s_fixed + self._s_ar_fixed + tokens * (self._s_act_token + self._s_ar_token + self._s_kv_token)
        t += roof(tokens * self._s_lin_token, self._s_lin_weights)
        if f.prefill_tokens:
            # KV read by prefill: cached context + the chunk itself, per chunk (the scheduler fills
            # prefill_context; hand-built features without it get the aggregate estimate, exact
            # for one sequence: attn / new = ctx + new / 2).
            kv_read = f.prefill_context or (
                max(f.prefill_seqs, 1) * f.prefill_attn / f.prefill_tokens + f.prefill_tokens / 2)
            t += roof(f.prefill_attn * self._s_attn_unit, kv_read * self._s_kv_token)
        if f.decode_seqs:
            kv_token = self._s_kv_token_mixed if f.prefill_tokens else self._s_kv_token
            t += roof(f.decode_context * self._s_attn_unit, f.decode_context * kv_token)
        if f.sampled:
            t += roof(f.sampled * self._s_head_row, self._s_head_weights)
        return t

    def decode_step_times(self, f: StepFeatures, k: int) -> np.ndarray:
        """step_time of k pure-decode steps from `f` on (see decode_contexts), element-wise the
        operations step_time does."""
        tokens = f.prefill_tokens + f.decode_seqs
        roof = self._roof
        t = self._s_fixed + self._s_ar_fixed + tokens * (self._s_act_token + self._s_ar_token + self._s_kv_token)
        t += roof(tokens * self._s_lin_token, self._s_lin_weights)
        ctx = decode_contexts(f, k)
        a, b = ctx * self._s_attn_unit, ctx * self._s_kv_token
        times = t + (a + b - self._overlap * np.minimum(a, b))
        if f.sampled:
            times = times + roof(f.sampled * self._s_head_row, self._s_head_weights)
        return times

    def linear_layer_time(self, tokens: int) -> float:
        """Linear layers of one layer (QKV, O, MLP) for `tokens` tokens: the term calibrated
        against Vidur; includes the per-layer kernel floor."""
        lin = self._roof(tokens * self._s_lin_token, self._s_lin_weights)
        return lin / self.model.num_layers + self.eff.layer_overhead_s

    def elementwise_layer_time(self, tokens: int) -> float:
        return tokens * self._s_act_token / self.model.num_layers

    def step_allreduce_time(self, tokens: int) -> float:
        """The all-reduces of one step of `tokens` tokens (part of step_time; 0 at tp=1)."""
        return self._s_ar_fixed + tokens * self._s_ar_token if tokens else 0.0

    def allreduce_time(self, nbytes: float) -> float:
        """One ring all-reduce of nbytes across this engine's tp GPUs."""
        if self.tp == 1:
            return 0.0
        ring = 2 * (self.tp - 1) / self.tp
        return self.eff.allreduce_latency_s + ring * nbytes / (self.gpu.nvlink_bandwidth_Bps * self.eff.network)

    def describe(self) -> dict:
        return {"kind": "roofline", "gpu": self.gpu.name, "model": self.model.name, "dtype": self.model.dtype,
                "tp": self.tp, "efficiency": self.eff.model_dump()}


SCALABLE = (*KNOWN_COEFFICIENTS, "token_curve")  # what FittedCostModel.from_profile may scale apart


class FittedCostModel:
    """t = const + sum_k c_k * feature_k, coefficients keyed by StepFeatures field names, plus the
    profile's token curve (seconds by the step's tokens) where it has one.
    A coefficient the profile does not name is 0 (profiles older than a feature still load)."""

    def __init__(self, coefficients: Mapping[str, float], info: Mapping | None = None,
                 token_curve: TokenCurve | None = None):
        unknown = sorted(set(coefficients) - set(KNOWN_COEFFICIENTS))
        if unknown:
            raise ValueError(f"unknown coefficient(s) {unknown}; known: {', '.join(KNOWN_COEFFICIENTS)}")
        self.coefficients = {k: float(coefficients.get(k, 0.0)) for k in KNOWN_COEFFICIENTS}
        c = self.coefficients
        self._const, self._p_tok, self._p_seq = c["const"], c["prefill_tokens"], c["prefill_seqs"]
        self._p_attn, self._d_seq, self._d_ctx = c["prefill_attn"], c["decode_seqs"], c["decode_context"]
        self._p_ctx, self._sampled = c["prefill_context"], c["sampled"]
        self.token_curve = token_curve
        self._curve = Table1D(token_curve.tokens, token_curve.seconds) if token_curve is not None else None
        self.info = dict(info or {})

    @classmethod
    def from_profile(cls, profile: CostProfile | str, scale: float | Mapping[str, float] = 1.0,
                     path: str | None = None) -> FittedCostModel:
        """Coefficients from a profile (or its path), times `scale`: one factor for all, or
        per-coefficient factors (missing ones 1.0; "token_curve" scales the curve), e.g. to rerun
        at the fit's error bounds."""
        if isinstance(profile, str):
            path, profile = profile, CostProfile.load(profile)
        if isinstance(scale, Mapping):
            unknown = sorted(set(scale) - set(SCALABLE))
            if unknown:
                raise ValueError(f"scale names unknown coefficient(s) {unknown}")
            factors = {k: float(scale.get(k, 1.0)) for k in SCALABLE}
        else:
            factors = dict.fromkeys(SCALABLE, float(scale))
        coef = {k: v * factors[k] for k, v in profile.coefficients.items()}
        curve = profile.token_curve
        if curve is not None and factors["token_curve"] != 1.0:
            curve = TokenCurve(tokens=curve.tokens, seconds=[s * factors["token_curve"] for s in curve.seconds])
        info = {"profile": path, "hardware": profile.hardware, "model": profile.model_name,
                "dtype": profile.dtype, "tp": profile.tp, "page_size": profile.page_size,
                "engine_version": profile.engine_version,
                "scale": dict(scale) if isinstance(scale, Mapping) else float(scale)}
        return cls(coef, info, curve)

    def token_seconds(self, tokens: float) -> float:
        """The token curve at a step of `tokens` tokens (0 without one)."""
        return self._curve(tokens) if self._curve is not None else 0.0

    def _base(self, f: StepFeatures) -> float:
        """The constant part of a step: const, plus the token curve at the step's tokens."""
        curve = self._curve
        return self._const if curve is None else self._const + curve(f.total_tokens)

    def step_time(self, f: StepFeatures) -> float:
        if f.prefill_tokens == 0 and f.decode_seqs == 0:
            return 0.0
        t = (self._base(f) + self._p_tok * f.prefill_tokens + self._p_seq * f.prefill_seqs
             + self._p_attn * f.prefill_attn + self._p_ctx * f.prefill_context + self._d_seq * f.decode_seqs
             + self._d_ctx * f.decode_context + self._sampled * f.sampled)
        return max(0.0, t)  # an extrapolating fit must never move the clock backwards

    def decode_step_times(self, f: StepFeatures, k: int) -> np.ndarray:
        """step_time of k pure-decode steps from `f` on, element-wise the same operations (a decode
        run keeps its tokens, so the token curve is one value for all k)."""
        head = (self._base(f) + self._p_tok * f.prefill_tokens + self._p_seq * f.prefill_seqs
                + self._p_attn * f.prefill_attn + self._p_ctx * f.prefill_context + self._d_seq * f.decode_seqs)
        times = head + self._d_ctx * decode_contexts(f, k) + self._sampled * f.sampled
        return np.maximum(times, 0.0)

    def describe(self) -> dict:
        out = {"kind": "fitted", **self.info, "coefficients": dict(self.coefficients)}
        if self.token_curve is not None:
            out["token_curve"] = self.token_curve.model_dump()
        return out
