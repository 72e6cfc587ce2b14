"""Step time composed from a measured per-layer profile (sim.layer_profile).

step = dense(T) + num_layers x attention(prefill chunk, its cached context, decode seqs,
mean decode context) + per_sequence(sampled) [+ 2 all-reduces per layer when tp > 1],
where T is the step's tokens. The dense operators are summed into one curve at construction
(a sum of piecewise-linear curves is piecewise linear on the union of their grids), so a step
costs one 1-D lookup, one attention lookup and one per-sequence lookup.

Decode sequences enter attention at their mean context: a uniform batch at the mean reads the
same KV bytes as the real, mixed batch, which is what a decode attention kernel's time tracks.
A mixed batch is a little slower than that (the longest sequences keep some SMs busy after the
rest finish); where the profiler measured skewed batches, the profile's alpha moves the time
that share of the way towards a uniform batch at the longest context.
"""
from __future__ import annotations

from typing import Literal

from core_api.step import StepFeatures
from sim.cost_models import ProfileSpec, load_profile, register
from sim.hardware import GPUSpec, ModelSpec, get_gpu, get_model
from sim.interpolate import Grid4D, Table1D
from sim.layer_profile import Curve, LayerProfile

US = 1e-6


def summed_curve(curves: list[tuple[Curve, float]]) -> Table1D:
    """sum(weight * curve) as one piecewise-linear table on the union of the x grids."""
    parts = [(Table1D(c.x, c.us), w) for c, w in curves]
    xs = sorted({x for c, _ in curves for x in c.x})
    return Table1D(xs, [sum(w * t(x) for t, w in parts) for x in xs])


class LayerCostModel:
    def __init__(self, profile: LayerProfile, model: ModelSpec | str | dict | None = None,
                 gpu: GPUSpec | str | dict | None = None, path: str | None = None,
                 network_efficiency: float = 0.7, allreduce_latency_s: float = 20e-6) -> None:
        self.profile, self.path = profile, path
        self.model = get_model(model if model is not None else profile.model)
        L = self.model.num_layers
        dense = [(profile.dense[op], L * n) for op, n in profile.per_layer.items()]
        dense += [(profile.dense[op], n) for op, n in profile.per_step.items()]
        self._dense = summed_curve(dense)
        self._per_seq = summed_curve([(c, 1.0) for c in profile.per_sequence.values()]) if profile.per_sequence else None
        self._attention = Grid4D(profile.attention.rows())
        self._layers = L
        self._skew = profile.decode_skew_alpha
        self._ar_fixed = self._ar_token = 0.0
        if profile.tp > 1:
            gpu_spec = get_gpu(gpu if gpu is not None else (profile.gpu or ""))
            ring = 2 * (profile.tp - 1) / profile.tp
            self._ar_fixed = 2 * L * allreduce_latency_s
            self._ar_token = 2 * L * ring * self.model.hidden_size * 2 / (
                gpu_spec.nvlink_bandwidth_Bps * network_efficiency)

    def step_time(self, f: StepFeatures) -> float:
        tokens = f.prefill_tokens + f.decode_seqs
        if tokens == 0:
            return 0.0
        kv_prefill = f.prefill_context - f.prefill_tokens
        kv_decode = f.decode_context / f.decode_seqs if f.decode_seqs else 0.0
        attention = self._attention(f.prefill_tokens, kv_prefill, f.decode_seqs, kv_decode)
        if self._skew and f.decode_max_context > kv_decode:
            longest = self._attention(f.prefill_tokens, kv_prefill, f.decode_seqs, f.decode_max_context)
            attention += self._skew * (longest - attention)
        us = self._dense(tokens) + self._layers * attention
        if f.sampled and self._per_seq is not None:
            us += self._per_seq(f.sampled)
        return us * US + self.step_allreduce_time(tokens)

    def step_allreduce_time(self, tokens: int) -> float:
        """The all-reduces of one step of `tokens` tokens (part of step_time; 0 at tp=1): modelled,
        since the tables are measured per rank without communication."""
        return self._ar_fixed + tokens * self._ar_token if tokens and self._ar_token else 0.0

    def describe(self) -> dict:
        p = self.profile
        return {"kind": "layers", "profile": self.path, "source": p.source.name, "hardware": p.hardware,
                "model": p.model_name, "dtype": p.dtype, "tp": p.tp, "page_size": p.page_size,
                "engine_version": p.engine_version, "fit_error": dict(p.fit_error)}


class LayersSpec(ProfileSpec):
    kind: Literal["layers"] = "layers"


def _build(spec: LayersSpec, cluster, engine, engine_id: str | None) -> LayerCostModel:
    from sim.profile_match import check_profile_matches

    profile = load_profile(spec.path, spec.kind)
    check_profile_matches(profile, engine, spec.path, engine_id)  # other model/page size/TP: refused
    return LayerCostModel(profile, engine.model_spec(), engine.gpu, path=spec.path)


register(LayersSpec, _build, lambda data, source: LayerProfile.from_dict(data, source=source))
