"""Replay one seeded workload on real engines and on the simulator; report how far apart they are.

The simulated cluster is built to match the real one exactly where the simulator decides
anything: the same scheduler limits (num_pages, page_size, max_num_batched_tokens,
max_num_seqs, max_model_len), the same model shape, the same strategy with the same
parameters. Its cost model is the fitted profile, refused if it was measured for another model,
page size or TP (sim.profile_match), with the control-call round trip and per-send engine CPU
the profile measured (rpc_latency_s, send_overhead_s; a colocated profile's router CPU per
token), and engines that read calls and KV chunks between steps, as the real engine loop does
(calls_between_steps), streaming, the idle cost, and the profile's fitted transfer model as the
link (sim.measured_host, which restates its bandwidth in the simulator's bytes).

Per metric the report gives real, sim, (sim - real) / real and, with a fitted error, the
interval from calibration.interval. The real run is preceded by a short warm-up workload on the
same engine processes (first steps pay for lazy initialisation, which the profile excluded).

What a profile cannot know is how fast the machine runs during the validation. On a shared
virtual machine a core's speed drifts by tens of percent over seconds, invisibly from inside
(no other process runs, steal time reads 0): the same step took 0.43 ms while one profile was
taken and 0.55-1.1 ms a minute later. So the engines report every step they ran (the whole
loop iteration, timed as the profiler times it, and the steps' summed features), and the report
gives the step speed: the engines' measured step time over what the profile predicts for those
very steps (the warm-up's steps left out: stats_between). Next to the plain comparison it reruns
the simulation with the profile scaled to that measured speed: the error left then is the
simulator's own (scheduling, overheads between steps), separated from the machine's drift. Since
that speed is only known once the run is over, each real run is preceded by a probe: a couple of
seconds of the same workload (another seed) on the same engines, whose step speed is measured the
same way; the comparison at the probed speed is a prediction made before the run, at the
machine's speed of the moment. It also says when a result is not to be trusted:
steps ran more than 5% off the profile, other processes used the CPU, the profile was measured
on another machine (or before a reboot), or the real repeats spread more than the error.

A report keeps what its real runs were (each run's metrics and its engines' step totals, the
engines' settings, the machine they ran on), so calibration.resimulate can hold them against a
later simulation, or another profile, without running real engines again.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from calibration.environment import ForeignLoad, boot_id, pin_engines, process_seconds, run_delay_seconds
from calibration.interval import DEFAULT_METRICS, metric_intervals, run_scaled
from calibration.profile import sim_model
from core_api.scheduler_config import SchedulerLimits
from core_api.workload import Workload, WorkloadSpec, generate
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig
from sim.cost_model import FittedCostModel
from sim.measured_host import host_effects, profile_link
from sim.profile import CostProfile
from sim.profile_match import check_profile_matches

ERROR_METRICS = DEFAULT_METRICS
HEADLINE = ("mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms")  # the goal: median |error| <= 5%
TRUSTED_STEP_DRIFT = 0.05  # steps off the profile by more than this: the plain comparison measures the machine
TRUSTED_FOREIGN_SHARE = 0.05
# EngineSpec fields that say where an engine ran, not how: a report does not keep them.
NOT_SIMULATED = {"id", "listen", "keys", "exit_with_parent", "nccl_init", "nccl_rank", "nccl_world"}
STEP_STATS = ("steps", "loop_s", "step_features", "stream", "idle_spells")  # what step_speed reads of a run
# The comparisons rerun with the profile at a measured step speed: (report field, title, what it is).
RESCALED = (("at_probe_speed", "at the step speed probed just before each run", "a prediction"),
            ("at_run_speed", "at the run's measured step speed", "the simulator's own error"))


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


# -- building both sides -------------------------------------------------------------------
def real_engine_spec(case: ValidationCase, profile: CostProfile):
    """The profiled engine's settings (from the profile's environment), then the case's overrides."""
    from real.config import EngineSpec

    base = dict(profile.environment.get("engine", {}))
    base.pop("id", None)
    return EngineSpec(**{**base, **case.engine})


def sim_engine_config(spec, profile: CostProfile, count: int) -> EngineConfig:
    from calibration.profile import model_config_of

    limits = {name: getattr(spec, name) for name in SchedulerLimits.model_fields}  # the same scheduler
    return EngineConfig(count=count, model=sim_model(model_config_of(spec)), tp=1, num_pages=spec.num_pages,
                        **limits)


def sim_cluster_config(case: ValidationCase, profile: CostProfile, spec) -> ClusterConfig:
    engine = sim_engine_config(spec, profile, case.engines)
    check_profile_matches(profile, engine, case.profile)  # refuse before any engine process starts
    return ClusterConfig(engines=[engine], link=profile_link(profile, engine),
                         strategy=StrategyConfig(name=case.strategy, params=case.params), cost_model=case.profile,
                         **host_effects(profile, spec.stream_interval_s))


def estimate_capacity(cluster: ClusterConfig, spec: WorkloadSpec) -> float:
    """Simulated saturation throughput (req/s): the workload with every request at t = 0."""
    burst = generate(spec.model_copy(update={"arrival": spec.arrival.model_copy(update={"rate": float("inf")})}))
    return SimCluster(cluster).run(burst).metrics()["request_throughput"]


# -- running ---------------------------------------------------------------------------------
@dataclass
class RealRun:
    """One real run on freshly started engine processes, and what the machine did meanwhile."""

    result: Any  # real.cluster.RealRunResult
    stats: dict[str, dict]  # each engine's stats over this run alone (warm-up and probe subtracted)
    probe_stats: dict[str, dict]  # and over the probe just before it (empty without one)
    probe_wait_s: dict[str, float]  # seconds each engine's loop waited for its core during the probe
    pinned: dict[str, int]
    foreign_share: float | None  # the CPU other processes used
    cpu_s: dict[str, float]  # CPU seconds of each engine process and of the router
    wait_s: dict[str, float]  # seconds each engine's loop was ready to run but its core was taken


def probe_workload(case: ValidationCase) -> Workload:
    """`probe_s` seconds of the case's arrivals, drawn with another seed: steps like the run's."""
    rate = case.workload.arrival.rate
    n = max(4, round(case.probe_s * rate)) if np.isfinite(rate) else case.warmup_requests or 8
    return generate(case.workload.model_copy(update={"num_requests": n, "seed": case.workload.seed + 20_000}))


def _since(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict]:
    """Each engine's stats between two reports of the same processes (all of `after` without one)."""
    from real.engine_stats import stats_between

    return {eid: stats_between(before[eid], st) if eid in before else st for eid, st in after.items()}


def run_real(case: ValidationCase, spec, workload: Workload) -> RealRun:
    from real.cluster import RealCluster
    from real.config import RealClusterConfig

    config = RealClusterConfig(engines=[{"count": case.engines, **spec.model_dump(exclude={"id", "listen"})}],
                               strategy={"name": case.strategy, "params": case.params})
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        with RealCluster(config) as cluster:
            pinned = pin_engines(cluster.procs) if case.pin else {}
            warmed: dict[str, dict] = {}
            if case.warmup_requests:
                warm = generate(case.workload.model_copy(update={
                    "num_requests": case.warmup_requests, "seed": case.workload.seed + 10_000,
                    "arrival": case.workload.arrival.model_copy(update={"rate": float("inf")})}))
                warmed = cluster.run(warm, seed=case.seed).engine_stats
            procs = dict(cluster.procs)
            probe: dict[str, dict] = {}
            probe_wait: dict[str, float] = {}
            if case.probe_s > 0:
                before = {eid: run_delay_seconds(p.pid) for eid, p in procs.items()}
                probed = cluster.run(probe_workload(case), seed=case.seed).engine_stats
                probe_wait = {eid: run_delay_seconds(p.pid) - before[eid] for eid, p in procs.items()}
                probe = _since(warmed, probed)
                warmed = probed
            cpu0 = {eid: process_seconds(p.pid) for eid, p in procs.items()}
            wait0 = {eid: run_delay_seconds(p.pid) for eid, p in procs.items()}
            router0 = time.process_time()
            with ForeignLoad([p.pid for p in procs.values()]) as foreign:
                result = cluster.run(workload, seed=case.seed)
            cpu = {eid: round(process_seconds(p.pid) - cpu0[eid], 3) for eid, p in procs.items()}
            cpu["router"] = round(time.process_time() - router0, 3)
            wait = {eid: round(run_delay_seconds(p.pid) - wait0[eid], 3) for eid, p in procs.items()}
            return RealRun(result, _since(warmed, result.engine_stats), probe, probe_wait, pinned, foreign.share, cpu,
                           wait)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def step_speed(profile: CostProfile, runs_stats: list[dict[str, dict]],
               waiting: list[dict[str, float]] | None = None) -> dict[str, float]:
    """Per engine, over the real runs: its measured step time over what the profile predicts for
    the same steps (a fitted step model is linear in the features, so sums give the prediction),
    and for the streamed tokens the engine sent meanwhile and the steps that ended an idle spell,
    when the profile measured those.
    `waiting` (per run, engine id -> seconds its loop waited for its core) is taken off the
    measured time: that is the router's CPU, which the simulator charges apart."""
    c = FittedCostModel.from_profile(profile).coefficients
    sc, idle = profile.stream, profile.idle
    measured: dict[str, float] = {}
    predicted: dict[str, float] = {}
    for i, stats in enumerate(runs_stats):
        for eid, st in stats.items():
            if "loop_s" not in st:
                continue
            totals = st.get("step_features", {})
            waited = waiting[i].get(eid, 0.0) if waiting else 0.0
            measured[eid] = measured.get(eid, 0.0) + st["loop_s"] - waited
            predicted[eid] = predicted.get(eid, 0.0) + c["const"] * st["steps"] + sum(
                v * totals.get(k, 0.0) for k, v in c.items() if k != "const")
            if sc is not None and "stream" in st:
                predicted[eid] += sc.seconds(**st["stream"])
            if idle is not None:
                predicted[eid] += sum(n * idle.seconds(total / n) for _, n, total in st.get("idle_spells", []) if n)
    return {eid: measured[eid] / predicted[eid] for eid in sorted(measured) if predicted[eid] > 0 and measured[eid] > 0}


def untrusted_reasons(profile: CostProfile, speeds: dict[str, float], foreign: float | None,
                      metrics: dict[str, MetricComparison], probe_speeds: dict[str, float] | None = None, *,
                      ran_on: str | None) -> list[str]:
    """Why a comparison should not be trusted; `ran_on` is the boot id of the machine the real runs
    ran on (None: not known)."""
    reasons = []
    if speeds and max(abs(s - 1) for s in speeds.values()) > TRUSTED_STEP_DRIFT:
        shown = ", ".join(f"{eid} {s:.2f}x" for eid, s in speeds.items())
        reasons.append(f"the engines' steps ran at {shown} the profile's step time: the machine's speed moved "
                       f"since profiling, so the plain error measures that drift (see the comparison at the run's "
                       f"speed)")
    moved = {eid: s / probe_speeds[eid] for eid, s in speeds.items() if probe_speeds and eid in probe_speeds}
    if moved and max(abs(m - 1) for m in moved.values()) > TRUSTED_STEP_DRIFT:
        shown = ", ".join(f"{eid} {probe_speeds[eid]:.2f}x -> {speeds[eid]:.2f}x" for eid in moved)
        reasons.append(f"the machine's speed moved between the probe and the run ({shown} the profile's step time), "
                       f"so the comparison at the probed speed measures that drift too")
    if foreign is not None and foreign > TRUSTED_FOREIGN_SHARE:
        reasons.append(f"other processes used {foreign:.0%} of the CPU during the real run")
    measured_on = profile.environment.get("boot_id")
    if measured_on is None:
        reasons.append("the profile does not say which machine it was measured on")
    elif ran_on is None:
        reasons.append("the report does not say which machine its real runs ran on")
    elif measured_on != ran_on:
        reasons.append("the profile was measured on another machine (or before a reboot)")
    noisy = [m for m in HEADLINE if m in metrics and metrics[m].real_spread is not None
             and metrics[m].real_spread > abs(metrics[m].rel_error)]
    if noisy:
        reasons.append(f"the real repeats spread more than the error on {', '.join(noisy)}")
    return reasons


def compare(real: list[dict[str, float]], sim: dict[str, float], intervals: dict | None = None,
            metrics=ERROR_METRICS) -> dict[str, MetricComparison]:
    """Per metric: the mean over the real runs, the simulated value, their relative error, and
    the real runs' own spread ((max - min) / mean): the noise floor the error should be read against."""
    out = {}
    for m in metrics:
        values = np.array([float(r.get(m, float("nan"))) for r in real])
        r, s = float(values.mean()), float(sim.get(m, float("nan")))
        spread = float((values.max() - values.min()) / r) if r and values.size > 1 else None
        lo, _, hi = intervals[m] if intervals and m in intervals else (None, None, None)
        out[m] = MetricComparison(real=r, sim=s, rel_error=(s - r) / r if r else float("nan"), sim_low=lo,
                                  sim_high=hi, real_runs=values.tolist(), real_spread=spread)
    return out


@dataclass
class SimSide:
    """The simulation of a case, run before the real engines so its wall time is its own."""

    cluster: ClusterConfig
    workload: Workload
    result: Any  # sim.cluster.RunResult
    intervals: dict | None
    wall_s: float
    router_cpu_s: float

    @classmethod
    def run(cls, case: ValidationCase, profile: CostProfile, spec) -> SimSide:
        cluster = sim_cluster_config(case, profile, spec)
        workload = generate(case.workload)
        t0 = time.perf_counter()
        simulated = SimCluster(cluster)
        result = simulated.run(workload, seed=case.seed)
        intervals = metric_intervals(cluster, workload, case.seed) if case.interval and profile.fit_error else None
        return cls(cluster, workload, result, intervals, time.perf_counter() - t0,
                   sum(e.router_cpu_s for e in simulated.engines.values()))


@dataclass
class RealSide:
    """What a report keeps of its real runs: everything a comparison with a simulation reads."""

    metrics: list[dict[str, float]]  # each run's
    failed: int
    wall_s: float
    pinned: dict[str, int]
    foreign_share: float | None  # the largest over the runs
    cpu_s: dict[str, float]  # means over the runs
    wait_s: dict[str, float]
    run_steps: list[RunSteps]
    probe_steps: list[RunSteps]
    engine: dict[str, Any] | None
    boot_id: str | None

    @classmethod
    def of_runs(cls, runs: list[RealRun], spec) -> RealSide:
        metrics = [r.result.metrics() for r in runs]
        shares = [r.foreign_share for r in runs if r.foreign_share is not None]
        return cls(
            metrics=metrics, failed=int(sum(m["failed"] + m["aborted"] for m in metrics)),
            wall_s=float(np.mean([r.result.wall_time_s for r in runs])), pinned=runs[0].pinned,
            foreign_share=max(shares) if shares else None,
            cpu_s={k: round(float(np.mean([r.cpu_s[k] for r in runs])), 3) for k in runs[0].cpu_s},
            wait_s={k: round(float(np.mean([r.wait_s[k] for r in runs])), 3) for k in runs[0].wait_s},
            run_steps=[RunSteps.of(r.stats, r.wait_s) for r in runs],
            probe_steps=[RunSteps.of(r.probe_stats, r.probe_wait_s) for r in runs if r.probe_stats],
            engine=spec.model_dump(mode="json", exclude=NOT_SIMULATED), boot_id=boot_id())


def validate(case: ValidationCase) -> ValidationReport:
    profile = CostProfile.load(case.profile)
    spec = real_engine_spec(case, profile)
    simulated = SimSide.run(case, profile, spec)
    runs = [run_real(case, spec, simulated.workload) for _ in range(case.real_repeats)]  # fresh engines each time
    return compared(case, profile, simulated, RealSide.of_runs(runs, spec))


def compared(case: ValidationCase, profile: CostProfile, sim: SimSide, real: RealSide,
             speeds: dict[str, float] | None = None, probe_speeds: dict[str, float] | None = None) -> ValidationReport:
    """The report on a case: its real runs against its simulation, plainly and at the step speeds
    measured against the profile (given, or from the runs' step totals)."""
    if speeds is None:
        speeds = steps_speed(profile, real.run_steps)
    if probe_speeds is None:
        probe_speeds = steps_speed(profile, real.probe_steps)
    at_probe = compare(real.metrics, run_scaled(sim.cluster, sim.workload, probe_speeds, case.seed).metrics()) \
        if probe_speeds else None
    at_speed = compare(real.metrics, run_scaled(sim.cluster, sim.workload, speeds, case.seed).metrics()) \
        if speeds else None
    sim_m = sim.result.metrics()
    metrics = compare(real.metrics, sim_m, sim.intervals)
    return ValidationReport(
        step_speed={eid: round(s, 4) for eid, s in speeds.items()}, at_run_speed=at_speed,
        probe_step_speed={eid: round(s, 4) for eid, s in probe_speeds.items()}, at_probe_speed=at_probe,
        untrusted=untrusted_reasons(profile, speeds, real.foreign_share, metrics, probe_speeds, ran_on=real.boot_id),
        case=case, rate=case.workload.arrival.rate, metrics=metrics, real_failed=real.failed,
        sim_failed=int(sim_m["failed"] + sim_m["aborted"]), real_wall_s=real.wall_s, sim_wall_s=sim.wall_s,
        pinned=real.pinned, foreign_cpu_share=real.foreign_share, real_cpu_s=real.cpu_s, real_wait_s=real.wait_s,
        sim_busy_s={eid: round(st["busy_s"], 3) for eid, st in sim.result.engine_stats.items()},
        sim_router_cpu_s=round(sim.router_cpu_s, 3), cost_model=next(iter(sim.result.cost_models.values())),
        real_engine=real.engine, real_boot_id=real.boot_id, run_steps=real.run_steps, probe_steps=real.probe_steps)


def steps_speed(profile: CostProfile, steps: list[RunSteps]) -> dict[str, float]:
    return step_speed(profile, [s.stats for s in steps], [s.wait_s for s in steps])


# -- presenting ------------------------------------------------------------------------------
def format_reports(reports: list[ValidationReport], metrics=ERROR_METRICS) -> str:
    """One row per metric, one column (real / sim / error) per run; then the headline summary."""
    heads = [f"{r.case.strategy}@{r.rate:.3g}/s" for r in reports]
    lines = [f"{'metric':<22}" + "".join(f"{h:>34}" for h in heads),
             f"{'':<22}" + "".join(f"{'real':>11}{'sim':>11}{'error':>12}" for _ in heads)]
    for m in metrics:
        row = f"{m:<22}"
        for r in reports:
            c = r.metrics[m]
            row += f"{c.real:>11.3f}{c.sim:>11.3f}{c.rel_error * 100:>11.1f}%"
        lines.append(row)
        if any(r.metrics[m].real_spread is not None for r in reports):
            spreads = [r.metrics[m].real_spread for r in reports]
            lines.append(f"{'  spread of real runs':<22}" + "".join(
                f"{'' if sp is None else f'{sp * 100:.1f}%':>34}" for sp in spreads))
    lines.append(f"{'foreign CPU share':<22}" + "".join(f"{_fmt_2f(r.foreign_cpu_share):>34}" for r in reports))
    lines.append(f"{'engine CPU-s real/sim':<22}" + "".join(f"{_fmt_cpu(r):>34}" for r in reports))
    lines.append(f"{'router CPU-s real/sim':<22}" + "".join(f"{_fmt_router(r):>34}" for r in reports))
    lines.append(f"{'engines waiting, s':<22}" + "".join(f"{_fmt_waiting(r):>34}" for r in reports))
    lines.append(f"{'step speed real/profile':<22}" + "".join(
        f"{' '.join(f'{s:.2f}x' for s in r.step_speed.values()) or 'n/a':>34}" for r in reports))
    lines.append(f"{'  in the probe before':<22}" + "".join(
        f"{' '.join(f'{s:.2f}x' for s in r.probe_step_speed.values()) or 'n/a':>34}" for r in reports))
    for which, title, meaning in RESCALED:
        if all(getattr(r, which) for r in reports):
            lines.append(f"{title} ({meaning}):")
            for m in HEADLINE:
                lines.append(f"  {m:<20}" + "".join(
                    f"{r.metrics[m].real:>11.3f}{getattr(r, which)[m].sim:>11.3f}"
                    f"{getattr(r, which)[m].rel_error * 100:>11.1f}%" for r in reports))
    lines.append(f"median |error| of {', '.join(HEADLINE)}: {headline_error(reports) * 100:.1f}%")
    for which, title, _ in RESCALED:
        if all(getattr(r, which) for r in reports):
            lines.append(f"  {title}: {headline_error(reports, which) * 100:.1f}%")
    for r in reports:
        for reason in r.untrusted:
            lines.append(f"not to be trusted ({r.case.strategy}@{r.rate:.3g}/s): {reason}")
    return "\n".join(lines)


def _fmt_waiting(r: ValidationReport) -> str:
    return " ".join(f"{v:.2f}" for v in r.real_wait_s.values()) or "n/a"


def _fmt_cpu(r: ValidationReport) -> str:
    real = sum(v for k, v in r.real_cpu_s.items() if k != "router")
    return f"{real:.2f}/{sum(r.sim_busy_s.values()):.2f}"


def _fmt_router(r: ValidationReport) -> str:
    return f"{_fmt_2f(r.real_cpu_s.get('router'))}/{_fmt_2f(r.sim_router_cpu_s)}"


def _fmt_2f(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.2f}"


def headline_error(reports: list[ValidationReport], which: str = "metrics") -> float:
    import statistics

    errors = [abs(getattr(r, which)[m].rel_error) for r in reports for m in HEADLINE]
    return statistics.median(errors) if errors else float("nan")
