"""What a validation compares and what its report keeps (calibration.validate runs it): the case,
each metric's real-vs-simulated comparison, and each real run's step totals, engine settings and
machine, so that calibration.resimulate can hold the real runs against a later simulation."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from calibration.interval import DEFAULT_METRICS
from core_api.workload import WorkloadSpec

ERROR_METRICS = DEFAULT_METRICS
HEADLINE = ("mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms")  # the goal: median |error| <= 5%
STEP_STATS = ("steps", "loop_s", "step_features", "steps_by_tokens", "stream", "idle_spells")  # what step_speed reads of a run


class ValidationCase(BaseModel):
    """One real-vs-sim comparison: cluster, strategy, workload."""

    model_config = ConfigDict(extra="forbid")

    profile: str
    strategy: str = "round_robin"
    params: dict[str, Any] = Field(default_factory=dict)
    engines: int = Field(2, ge=1)
    engine: dict[str, Any] = Field(default_factory=dict, description="EngineSpec overrides (real engines)")
    workload: WorkloadSpec
    seed: int = 0
    warmup_requests: int = Field(8, ge=0)
    probe_s: float = Field(2.0, ge=0, le=600, allow_inf_nan=False, description=(
        "seconds of the workload's arrivals (another seed) served just before each real run, on the same "
        "engines, to measure the machine's step speed then (0: none)"))
    real_repeats: int = Field(1, ge=1, description="real runs (fresh engines each); metrics are their mean")
    pin: bool = Field(True, description="pin each engine process to its own core")
    interval: bool = True


class MetricComparison(BaseModel):
    real: float
    sim: float
    rel_error: float
    sim_low: float | None = None
    sim_high: float | None = None
    real_runs: list[float] = Field(default_factory=list)
    real_spread: float | None = None


class RunSteps(BaseModel):
    """One real run's (or probe's) step totals per engine, what step_speed reads of them."""

    stats: dict[str, dict[str, Any]]
    wait_s: dict[str, float] = Field(default_factory=dict, description="seconds each engine waited for its core")

    @classmethod
    def of(cls, stats: dict[str, dict], wait_s: dict[str, float]) -> RunSteps:
        return cls(stats={eid: {k: st[k] for k in STEP_STATS if k in st} for eid, st in stats.items()},
                   wait_s=wait_s)


class ValidationReport(BaseModel):
    case: ValidationCase
    rate: float
    metrics: dict[str, MetricComparison]
    real_failed: int
    sim_failed: int
    real_wall_s: float
    sim_wall_s: float
    pinned: dict[str, int]
    foreign_cpu_share: float | None = Field(None, description="CPU share other processes used during the real "
                                            "run (the largest over repeats)")
    real_cpu_s: dict[str, float] = Field(default_factory=dict, description=(
        "CPU seconds per engine process (and the router) during the real run: next to sim_busy_s it "
        "separates cost-model error (CPU work differs) from contention (same work, later finish)"))
    real_wait_s: dict[str, float] = Field(default_factory=dict, description=(
        "per engine, seconds its loop was ready to run but another thread held its core (the kernel's "
        "run delay; mean over the real runs): on a shared host, the router's CPU"))
    sim_busy_s: dict[str, float] = Field(default_factory=dict)
    sim_router_cpu_s: float | None = Field(None, description=(
        "the router's CPU the simulation took from the engines' cores (sim.host, per streamed token as profiled); "
        "next to real_cpu_s['router']"))
    cost_model: dict
    step_speed: dict[str, float] = Field(default_factory=dict, description=(
        "per engine, over the real runs: its measured step time / the profile's prediction for the same steps"))
    probe_step_speed: dict[str, float] = Field(default_factory=dict, description=(
        "per engine, the same ratio over the probe served just before each real run: the machine's speed then"))
    at_probe_speed: dict[str, MetricComparison] | None = Field(None, description=(
        "the comparison with the profile scaled to the probe's step speed: a prediction made before the run"))
    at_run_speed: dict[str, MetricComparison] | None = Field(None, description=(
        "the comparison again with the profile scaled to the measured step speed: the simulator's own error"))
    untrusted: list[str] = Field(default_factory=list, description="reasons not to trust this comparison")
    real_engine: dict[str, Any] | None = Field(None, description=(
        "the real engines' settings (EngineSpec): what a later resimulation builds its engines from"))
    real_boot_id: str | None = Field(None, description="the boot of the machine the real runs ran on")
    run_steps: list[RunSteps] = Field(default_factory=list, description=(
        "per real run, each engine's step totals: the step speed measured again against another profile"))
    probe_steps: list[RunSteps] = Field(default_factory=list, description="the same for each probe")
