"""Public GPU measurements as observations a roofline can be fitted to and checked against.

Each source gives what it measured, priced the way the roofline prices it:

- per-layer vLLM profiles (sim.layer_profile): whole steps composed from the measured tables at
  grid shapes (prefill chunks over cached context, decode batches, mixed batches). The tables
  are per rank and exclude the all-reduces, so for tp > 1 the roofline is compared without them.
- Vidur `mlp.csv`: the four linear layers (QKV, O, up/gate, down) of one layer vs tokens and TP.
- LLMServingSim v0 H100 `layers.csv`: the seven projections of one Hugging Face layer vs tokens.
- Splitwise `perf_model.csv`: whole-model prefill of a batch of prompts and one decode step of a
  batch, Llama-2-70B on A100 and H100 at TP 2-8 (power-capped rows are not used: a roofline of
  datasheet peaks does not describe a capped GPU).
"""
from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass
from pathlib import Path

from core_api.step import StepFeatures
from sim.layer_cost_model import LayerCostModel
from sim.layer_profile import LayerProfile


@dataclass(frozen=True)
class Observation:
    source: str
    gpu: str
    model: str
    tp: int
    kind: str  # "step" | "linear_layer"
    seconds: float
    features: StepFeatures | None = None  # kind "step"
    tokens: int = 0  # kind "linear_layer"
    with_allreduce: bool = True  # False: measured per rank without communication
    label: str = ""


def _prefill(chunk: int, cached: int, seqs: int = 1) -> StepFeatures:
    per = chunk // seqs
    return StepFeatures(prefill_tokens=chunk, prefill_seqs=seqs, prefill_attn=seqs * per * (cached + per / 2),
                        prefill_context=seqs * (cached + per), sampled=seqs)


def _decode(seqs: int, context: int) -> StepFeatures:
    return StepFeatures(decode_seqs=seqs, decode_context=seqs * context, decode_max_context=context, sampled=seqs)


def layer_profile_steps(profile: LayerProfile, source: str) -> list[Observation]:
    """Steps composed from the profile's tables at shapes on its attention grid."""
    cost = LayerCostModel(profile.model_copy(update={"decode_skew_alpha": 0.0}))
    grid = profile.attention
    chunks = sorted({c for c in grid.prefill_chunk if c})
    decodes = sorted({n for n in grid.n_decode if n})
    contexts = sorted({k for k in grid.kv_decode if k >= 128})
    shapes = [(f"prefill {c} over {kp}", _prefill(c, kp)) for c in chunks for kp in (0, 1024, 4096)
              if kp in set(grid.kv_prefill)]
    shapes += [(f"decode {n} x {k}", _decode(n, k)) for n in decodes for k in contexts]
    # Chunked prefill batched with running decodes: what a loaded vLLM engine runs most of the time,
    # and what its one varlen attention kernel runs slowest (see RooflineEfficiency.mixed_kv_reread).
    for c in (256, 1024):
        for n in (16, 64, 128):
            for k in (1024, 4096):
                if c in chunks and n in decodes and k in contexts:
                    f = _prefill(c, 0)
                    f.decode_seqs, f.decode_context, f.decode_max_context, f.sampled = n, n * k, k, n + 1
                    shapes.append((f"mixed {c} + {n} x {k}", f))
    # The tables are per rank without communication: what they measured is the step less the
    # all-reduces the layer model adds for tp > 1 (compared with the roofline's likewise).
    return [Observation(source, profile.gpu or profile.hardware, profile.model_name, profile.tp, "step",
                        cost.step_time(f) - cost.step_allreduce_time(f.total_tokens), features=f,
                        with_allreduce=profile.tp == 1, label=label)
            for label, f in shapes]


# Token counts kept from tables that have every one: powers of two and their midpoints (every count
# would cost fitting time without adding information).
POW2_GRID = frozenset({2**k for k in range(15)} | {3 * 2**k for k in range(14)})


def layer_profile_linear(profile: LayerProfile, source: str) -> list[Observation]:
    """The linear layers of one decoder layer (every `*_proj` operator) vs tokens, from the dense
    tables: what pins a GPU's GEMM and memory factors apart from its attention, which whole steps
    alone trade against them."""
    linear = {op: n for op, n in profile.per_layer.items() if op.endswith("_proj")}
    if not linear:
        return []
    grid = sorted(set.intersection(*(set(profile.dense[op].x) for op in linear)) & POW2_GRID)
    tables = {op: dict(zip(profile.dense[op].x, profile.dense[op].us)) for op in linear}
    return [Observation(source, profile.gpu or profile.hardware, profile.model_name, profile.tp, "linear_layer",
                        sum(n * tables[op][x] for op, n in linear.items()) * 1e-6, tokens=int(x), label=f"{int(x)} tokens")
            for x in grid]


VIDUR_LINEAR = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
VIDUR_MODELS = {("4096", "11008", "32"): "Llama-2-7B", ("8192", "28672", "64"): "Llama-2-70B"}


def vidur_mlp(path: Path, gpu: str) -> list[Observation]:
    rows: dict[tuple[str, int, int], dict] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            model = VIDUR_MODELS.get((r["n_embd"], r["n_expanded_embd"], r["n_head"]))
            if model is None:
                continue
            rows[(model, int(r["num_tokens"]), int(r["num_tensor_parallel_workers"]))] = r
    return [Observation("vidur-mlp", gpu, model, tp, "linear_layer",
                        sum(float(r[f"time_stats.{op}.median"]) for op in VIDUR_LINEAR) * 1e-3, tokens=n,
                        label=f"{n} tokens")
            for (model, n, tp), r in sorted(rows.items())]


V0_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def h100_v0_layers(path: Path, model: str, tp: int, gpu: str = "H100-SXM") -> list[Observation]:
    sums: dict[int, float] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            if r["layer_name"] in V0_LINEAR and int(r["kv_cache"]) == 0:
                n = int(r["input"])
                sums[n] = sums.get(n, 0.0) + float(r["latency(ns)"]) * 1e-9
    return [Observation("h100-v0-layers", gpu, model, tp, "linear_layer", t, tokens=n, label=f"{n} tokens")
            for n, t in sorted(sums.items()) if n in POW2_GRID]


SPLITWISE_GPUS = {"a100-80gb": "A100-80G", "h100-80gb": "H100-SXM"}
SPLITWISE_MODELS = {"llama2-70b": "Llama-2-70B"}


def splitwise(path: Path) -> list[Observation]:
    groups: dict[tuple, list[tuple[float, float]]] = {}
    with path.open(newline="") as f:
        for r in csv.DictReader(f):
            gpu, model = SPLITWISE_GPUS.get(r["hardware"]), SPLITWISE_MODELS.get(r["model"])
            if gpu is None or model is None:
                continue
            key = (gpu, model, int(r["tensor_parallel"]), int(r["prompt_size"]), int(r["batch_size"]),
                   int(r["token_size"]))
            groups.setdefault(key, []).append((float(r["prompt_time"]), float(r["token_time"])))
    out = []
    for (gpu, model, tp, prompt, batch, gen), times in sorted(groups.items()):
        prefill_ms = statistics.median(t[0] for t in times)
        decode_ms = statistics.median(t[1] for t in times)
        out.append(Observation("splitwise", gpu, model, tp, "step", prefill_ms * 1e-3,
                               features=_prefill(prompt * batch, 0, batch), label=f"prefill {batch} x {prompt}"))
        # token_time averages the decode steps, whose context grows from prompt to prompt + gen.
        out.append(Observation("splitwise", gpu, model, tp, "step", decode_ms * 1e-3,
                               features=_decode(batch, prompt + gen // 2), label=f"decode {batch} x {prompt}+{gen}"))
    return out


def load_all(data: Path, skipped: list[str] | None = None) -> list[Observation]:
    """Every source under a data folder laid out as the project's shared/data (missing ones skipped).
    A layer profile of a GPU or model the roofline has no spec for is left out, and said so in
    `skipped`: the other measurements still fit."""
    from calibration.importers.vllm_layers import import_bundle
    from sim.hardware import get_gpu, get_model

    obs: list[Observation] = []
    layers = data / "real_gpu" / "layer_profiles"
    for bundle in sorted(layers.glob("*")) if layers.is_dir() else []:
        for tp_dir in sorted(bundle.glob("tp*")):
            profile = import_bundle(bundle, int(tp_dir.name[2:]))
            try:
                get_gpu(profile.gpu or profile.hardware), get_model(profile.model_name)
            except ValueError as exc:
                if skipped is not None:
                    skipped.append(f"{tp_dir}: {exc}; its measurements are left out of the fit")
                continue
            obs += layer_profile_steps(profile, "vllm-layers") + layer_profile_linear(profile, "vllm-linear")
    for path, gpu in ((data / "vidur_h100_profiles" / "mlp.csv", "H100-SXM"),
                      *((p / "mlp.csv", "H100-SXM" if p.name.startswith("h100") else "A100-80G")
                        for p in sorted((data / "vidur_profiles_more").glob("*")))):
        if path.exists():
            obs += vidur_mlp(path, gpu)
    v0 = data / "real_gpu" / "layer_profiles_h100_v0"
    for path in sorted(v0.glob("*/tp*/layers.csv")) if v0.is_dir() else []:
        obs += h100_v0_layers(path, path.parent.parent.name, int(path.parent.name[2:]))
    sw = data / "real_gpu" / "splitwise_perf_model.csv"
    if sw.exists():
        obs += splitwise(sw)
    return obs
