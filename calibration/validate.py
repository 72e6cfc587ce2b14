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

The report's models are in calibration.validation_report, the step speed and the reasons not to
trust a comparison in calibration.step_speed, the printed table in calibration.validation_table.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.environment import ForeignLoad, boot_id, pin_engines, process_seconds, run_delay_seconds
from calibration.interval import metric_intervals, run_scaled
from calibration.profile import sim_model
from calibration.step_speed import steps_speed, untrusted_reasons
from calibration.validation_report import (
    ERROR_METRICS,
    MetricComparison,
    RunSteps,
    ValidationCase,
    ValidationReport,
)
from core_api.scheduler_config import SchedulerLimits
from core_api.workload import Workload, WorkloadSpec, generate
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig
from sim.measured_host import host_effects, profile_link
from sim.profile import CostProfile
from sim.profile_match import check_profile_matches

# EngineSpec fields that say where an engine ran, not how: a report does not keep them.
NOT_SIMULATED = {"id", "listen", "keys", "exit_with_parent", "nccl_init", "nccl_rank", "nccl_world"}


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


PROBE_MAX_RUNS = 2  # a probe holds at most this many times the run's requests


def probe_workload(case: ValidationCase) -> Workload:
    """`probe_s` seconds of the case's arrivals, drawn with another seed: steps like the run's. At
    most PROBE_MAX_RUNS times the run's requests: far above saturation, `probe_s` seconds of
    arrivals would be a run many times the real one (at 1000x the capacity, 126k requests for a
    run of 100), which the engines would then serve for half an hour at their capacity."""
    rate = case.workload.arrival.rate
    cap = PROBE_MAX_RUNS * case.workload.num_requests
    n = max(4, min(round(case.probe_s * rate), cap)) if np.isfinite(rate) else case.warmup_requests or 8
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

    def at(step_speeds: dict[str, float]) -> dict[str, MetricComparison] | None:
        """The comparison with the simulation rerun at these step speeds (none measured: None)."""
        if not step_speeds:
            return None
        return compare(real.metrics, run_scaled(sim.cluster, sim.workload, step_speeds, case.seed).metrics())

    at_probe, at_speed = at(probe_speeds), at(speeds)
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
