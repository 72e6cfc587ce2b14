"""An interval for every simulated metric from the fit's own error.

A fitted profile says how far its step times were off on held-out samples (MAPE). Rerunning
the same simulation with every coefficient scaled by (1 - mape) and by (1 + mape) brackets what
that error does to the metrics; queueing makes the effect non-linear (near saturation a few
percent of step time is many percent of TTFT), which is exactly what the interval shows.
"""
from __future__ import annotations

from collections.abc import Iterable

from core_api.workload import Workload
from sim.cluster import RunResult, SimCluster
from sim.config import ClusterConfig
from sim.cost_model import FittedCostModel
from sim.profile import CostProfile

DEFAULT_METRICS = ("mean_ttft_ms", "p90_ttft_ms", "mean_tpot_ms", "p90_tpot_ms", "mean_e2el_ms", "p90_e2el_ms",
                   "request_throughput", "output_throughput")


def fit_error_of(profile: CostProfile, key: str = "overall") -> float:
    if key not in profile.fit_error:
        known = ", ".join(sorted(profile.fit_error)) or "none"
        raise ValueError(f"profile has no fit_error[{key!r}] to build an interval from (has: {known})")
    return profile.fit_error[key]


def run_scaled(cluster: ClusterConfig, workload: Workload, scale: float | dict[str, float], seed: int = 0) -> RunResult:
    """Simulate with every engine's fitted coefficients multiplied by `scale` (one factor, or
    one per engine id; an engine not named keeps 1.0)."""
    if cluster.cost_model.kind != "fitted":
        raise ValueError(f"intervals need a fitted profile as the cluster's cost_model, not {cluster.cost_model.kind!r}")
    sim = SimCluster(cluster)  # loads the profile and checks it against every engine
    for eid, engine in sim.engines.items():
        factor = scale.get(eid, 1.0) if isinstance(scale, dict) else scale
        engine.cost_model = FittedCostModel.from_profile(cluster.cost_model.path, scale=factor)
        sim.cost_models[eid] = engine.cost_model.describe()
    return sim.run(workload, seed=seed)


def metric_intervals(cluster: ClusterConfig, workload: Workload, seed: int = 0, error: float | None = None,
                     metrics: Iterable[str] = DEFAULT_METRICS) -> dict[str, tuple[float, float, float]]:
    """{metric: (low, mid, high)}: mid at the fitted coefficients, low/high the extremes of the
    runs at (1 - error) and (1 + error); error defaults to the profile's held-out MAPE."""
    if error is None:
        error = fit_error_of(CostProfile.load(cluster.cost_model.path))
    if not 0 <= error < 1:
        raise ValueError(f"error must be in [0, 1), got {error}")
    runs = [run_scaled(cluster, workload, s, seed).metrics() for s in (1 - error, 1.0, 1 + error)]
    out = {}
    for m in metrics:
        lo, mid, hi = (r.get(m, float("nan")) for r in runs)
        out[m] = (min(lo, mid, hi), mid, max(lo, mid, hi))
    return out
