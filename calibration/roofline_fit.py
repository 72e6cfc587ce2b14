"""Fit the roofline's efficiency factors to public GPU measurements, and measure how it generalizes.

The roofline (sim.cost_model.RooflineCostModel) turns datasheet peaks into step times with a
handful of factors: the fractions of peak FLOP/s GEMMs reach and of HBM bandwidth (the GPU's),
the fraction of peak attention kernels reach and fixed costs per layer and per step (the
software's, fitted per source). Fitted by least squares on the log ratio of predicted to
measured time (a relative error, so a 10 us kernel and a 1 s prefill count alike), each group
of observations (source, GPU, model, TP) weighted equally so the largest file does not decide
the fit.

Every fit gives each measured GPU its own GPU factors, so that one GPU's departure from its
datasheet (a card clocked above its rated boost, a bandwidth figure it never reaches) is not put
on the software factors it shares with other GPUs' measurements of the same engine. A GPU nobody
measured gets the typical GPU: the median of the measured GPUs' own factors (`for_any_gpu`).
Fitting one set of GPU factors for all GPUs instead let the RTX 4090 (above its datasheet's
GEMM peak) pull vLLM's attention to 1.0 of peak and its per-layer cost to 0 whenever it was the
only other vLLM GPU; the error on a GPU left out of the fit was 13.6% on average, 12.0% this way.

Three questions, each answered by a fit:
- per GPU: the best roofline for a GPU that has measurements (a `kind: roofline` profile);
- leave one TP degree out: does a fit extrapolate to a TP degree it never saw?
- leave one GPU out: what does a user get for a GPU nobody profiled? (the shipped defaults
  are the typical GPU of the fit on all GPUs; this is its honest error).
"""
from __future__ import annotations

import datetime as dt
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import least_squares

from calibration.public_data import Observation
from sim.cost_model import RooflineCostModel, RooflineEfficiency
from sim.layer_profile import ProfileSource
from sim.roofline_profile import RooflineProfile

# name -> (lower, upper bound). The efficiencies of GEMMs and HBM describe the GPU and are shared
# by every source. What describes the software that ran the kernels is fitted per source: its
# fixed costs per layer and per step (eager Hugging Face layers, vLLM with CUDA graphs,
# Splitwise's engine), and how fast its attention kernels are, which depends on the kernels an
# engine ships (FlashAttention's generation, or none) as much as on the GPU: Splitwise's
# Llama-2-70B steps, the only attention measured on A100 and H100, reach 0.08 of peak, vLLM's
# kernels on the RTX cards 0.7-0.8. As a GPU factor, Splitwise's value became the attention of
# every A100 and H100 roofline and priced a vLLM engine's prefill attention 10x too slow.
# How dear decode rows beside a prefill chunk re-read their KV (once per query head:
# RooflineCostModel) is fitted per GPU, and only where a GPU measured such batches: with the same
# vLLM kernels each re-read costs 0.62 of an HBM read on the RTX 4090 and 0.44 on the RTX PRO 6000.
GPU_PARAMS: dict[str, tuple[float, float]] = {
    "compute": (0.05, 1.0),
    "memory": (0.05, 1.0),
    "overlap": (0.0, 1.0),
    "mixed_kv_reread": (0.0, 1.0),
}
ENGINE_PARAMS: dict[str, tuple[float, float]] = {
    "attention": (0.02, 1.0),
    "layer_overhead_s": (0.0, 2e-4),
    "step_overhead_s": (0.0, 5e-2),
}
# The engine whose fixed costs a fitted roofline carries: the one the simulated engines stand for.
DEFAULT_ENGINE_SOURCE = "vllm-layers"


def group_of(o: Observation) -> tuple[str, str, str, int]:
    return (o.source, o.gpu, o.model, o.tp)


class _Models:
    """RooflineCostModels per (source, gpu, model, tp) for one set of factors."""

    def __init__(self, fitted: RooflineFit) -> None:
        self.fitted, self._cache = fitted, {}

    def __call__(self, o: Observation) -> RooflineCostModel:
        key = (o.source, o.gpu, o.model, o.tp)
        if key not in self._cache:
            self._cache[key] = RooflineCostModel(o.gpu, o.model, o.tp, self.fitted.efficiency(o.gpu, o.source))
        return self._cache[key]


def predict(o: Observation, models: _Models) -> float:
    cm = models(o)
    if o.kind == "linear_layer":
        return cm.linear_layer_time(o.tokens)
    t = cm.step_time(o.features)
    if not o.with_allreduce:
        t -= cm.step_allreduce_time(o.features.total_tokens)
    return t


ANY_GPU = "*"


@dataclass
class RooflineFit:
    gpus: dict[str, dict[str, float]]  # GPU preset (or ANY_GPU, the typical GPU) -> GPU_PARAMS values
    engines: dict[str, dict[str, float]]  # source -> ENGINE_PARAMS values

    def efficiency(self, gpu: str = ANY_GPU, source: str | None = None) -> RooflineEfficiency:
        """The factors for `gpu` (its own when fitted per GPU, else the shared ones) with `source`'s
        software factors (default: the vLLM source's). A factor the source did not fit (a source of
        single layers has no steps, so no attention or per-step cost) is the median over the sources
        that fitted it, or the model's default if none did."""
        factors = self.gpus.get(gpu) or self.gpus.get(ANY_GPU)
        if factors is None:
            raise KeyError(f"no factors fitted for GPU {gpu!r} (fitted: {sorted(self.gpus)}); for_any_gpu() gives "
                           "the typical GPU's")
        factors = {**_typical(self.gpus.values()), **factors}  # what this GPU never measured
        own = self.engines.get(source or DEFAULT_ENGINE_SOURCE, {})
        software = {}
        for name in ENGINE_PARAMS:
            fitted = [e[name] for e in self.engines.values() if name in e]
            if name in own:
                software[name] = own[name]
            elif fitted:
                software[name] = float(np.median(fitted))
        return RooflineEfficiency.model_validate({**RooflineEfficiency().model_dump(), **factors, **software})


def _typical(factor_sets: Iterable[dict[str, float]]) -> dict[str, float]:
    """Each factor's median over the sets that have it."""
    values: dict[str, list[float]] = defaultdict(list)
    for factors in factor_sets:
        for name, value in factors.items():
            values[name].append(value)
    return {name: float(np.median(v)) for name, v in values.items()}


def _gpu_params(gpu: str, observations: Sequence[Observation]) -> dict[str, tuple[float, float]]:
    """The GPU factors `gpu`'s observations can tell: none of them says how decode rows run beside a
    prefill chunk unless one mixed the two in a step."""
    mixed = any(step_kind(o) == "mixed" for o in observations if o.gpu == gpu)
    return {n: b for n, b in GPU_PARAMS.items() if mixed or n != "mixed_kv_reread"}


def _engine_params(source: str, observations: Sequence[Observation]) -> dict[str, tuple[float, float]]:
    """The software factors `source`'s observations can tell: a source that timed only single layers
    says nothing about attention or per-step costs."""
    stepped = any(o.kind == "step" for o in observations if o.source == source)
    return {n: b for n, b in ENGINE_PARAMS.items() if stepped or n == "layer_overhead_s"}


def fit(observations: Sequence[Observation]) -> RooflineFit:
    """Least squares on log(predicted / measured): each GPU's efficiencies its own, the software
    factors (attention, fixed costs) one set per source shared by every GPU it ran on."""
    if not observations:
        raise ValueError("no observations to fit")
    sources = sorted({o.source for o in observations})
    gpus = sorted({o.gpu for o in observations})
    counts: dict[tuple, int] = defaultdict(int)
    for o in observations:
        counts[group_of(o)] += 1
    weights = np.array([1.0 / math.sqrt(counts[group_of(o)]) for o in observations])
    measured = np.log([o.seconds for o in observations])
    base = RooflineEfficiency()
    blocks = [("gpus", _gpu_params(g, observations), g) for g in gpus] + [
        ("engines", _engine_params(src, observations), src) for src in sources]
    bounds = [b for _, params, _ in blocks for b in params.values()]
    lo, hi = [b[0] for b in bounds], [b[1] for b in bounds]
    x0 = [min(max(getattr(base, n), b[0]), b[1]) for _, params, _ in blocks for n, b in params.items()]

    def unpack(x) -> RooflineFit:
        out: dict[str, dict] = {"gpus": {}, "engines": {}}
        k = 0
        for kind, params, key in blocks:
            out[kind][key] = dict(zip(params, map(float, x[k: k + len(params)])))
            k += len(params)
        return RooflineFit(out["gpus"], out["engines"])

    def residuals(x):
        models = _Models(unpack(x))
        return weights * (np.log([max(predict(o, models), 1e-12) for o in observations]) - measured)

    result = least_squares(residuals, x0, bounds=(lo, hi), x_scale=[h - low for low, h in zip(lo, hi)], method="trf")
    return unpack(result.x)


def for_any_gpu(fitted: RooflineFit) -> RooflineFit:
    """The fit's typical GPU: each GPU factor the median of the fitted GPUs' own (of those that
    measured it), with the same software factors. What a GPU without measurements is priced with."""
    return RooflineFit({ANY_GPU: _typical(fitted.gpus.values())}, fitted.engines)


def mape_by_group(observations: Iterable[Observation], fitted: RooflineFit) -> dict[tuple, float]:
    models, errs = _Models(fitted), defaultdict(list)
    for o in observations:
        errs[group_of(o)].append(abs(predict(o, models) / o.seconds - 1))
    return {g: float(np.mean(e)) for g, e in errs.items()}


def step_kind(o: Observation) -> str:
    """What an observation timed: a linear layer, or a prefill, decode or mixed step."""
    if o.kind == "linear_layer":
        return "linear layer"
    f = o.features
    return "mixed" if f.prefill_tokens and f.decode_seqs else "prefill" if f.prefill_tokens else "decode"


def mape_by_kind(observations: Iterable[Observation], fitted: RooflineFit) -> dict[str, float]:
    """MAPE of each step kind (step_kind), over every observation of that kind."""
    models, errs = _Models(fitted), defaultdict(list)
    for o in observations:
        errs[step_kind(o)].append(abs(predict(o, models) / o.seconds - 1))
    return {k: float(np.mean(e)) for k, e in sorted(errs.items())}


def mape(observations: Sequence[Observation], fitted: RooflineFit) -> float:
    """Mean over groups of each group's MAPE (groups weigh equally, as in the fit)."""
    by_group = mape_by_group(observations, fitted)
    return float(np.mean(list(by_group.values())))


def tp_holdout(observations: Sequence[Observation]) -> list[dict]:
    """For every (source, gpu, model) measured at several TP degrees: fit on the others, report
    the error on each degree left out (and the in-sample error of a fit that saw it)."""
    by_series: dict[tuple, list[Observation]] = defaultdict(list)
    for o in observations:
        by_series[(o.source, o.gpu, o.model)].append(o)
    rows = []
    for (source, gpu, model), obs in sorted(by_series.items()):
        tps = sorted({o.tp for o in obs})
        if len(tps) < 2:
            continue
        for tp in tps:
            train = [o for o in obs if o.tp != tp]
            test = [o for o in obs if o.tp == tp]
            rows.append({"source": source, "gpu": gpu, "model": model, "tp_left_out": tp,
                         "trained_on": [t for t in tps if t != tp],
                         "heldout_mape": mape(test, fit(train)), "insample_mape": mape(test, fit(obs))})
    return rows


def gpu_holdout_fits(observations: Sequence[Observation]) -> dict[str, RooflineFit]:
    """For each GPU, one set of efficiencies fitted on every other GPU's measurements: what a
    user gets for that GPU had nobody profiled it."""
    gpus = sorted({o.gpu for o in observations})
    return {g: for_any_gpu(fit([o for o in observations if o.gpu != g])) for g in gpus}


def to_profile(eff: RooflineEfficiency, gpu: str | None, observations: Sequence[Observation],
               fit_error: dict[str, float], notes: str) -> RooflineProfile:
    sources = sorted({o.source for o in observations})
    return RooflineProfile(
        source=ProfileSource(name="roofline fitted to public GPU measurements", notes=f"{notes}; sources: "
                             f"{', '.join(sources)}"),
        gpu=gpu, efficiency=eff, fit_error=fit_error, sample_count=len(observations),
        created=dt.date.today().isoformat())
