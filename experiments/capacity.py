"""`microserving capacity`: the highest request rate at which a setup still meets its SLOs.

Capacity = max rate such that at least `target` of requests are good (ok, within every given
TTFT / TPOT / E2E limit). Found by bisection on the simulator: one fixed workload (same
requests, same arrival pattern) is rescaled to each probed rate with Workload.scaled_to_rate,
so probes differ only in rate and attainment is (close to) monotone in it. First the bracket:
the start rate is doubled or halved until one rate passes and one fails; then bisection until
the bracket is within `rel_tol`. The answer is the highest rate probed that passed.

Monotonicity is assumed, not guaranteed (a scheduler can get lucky at a higher rate); the
returned probes let a caller check. Warm-up requests run but do not count.
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from core_api.metrics import summarize
from core_api.validation_errors import error_text
from core_api.workload import Workload
from experiments.arg_types import add_slo_arguments, positive_float, positive_int
from sim.config import ClusterConfig


@dataclass
class Probe:
    rate: float
    attainment: float
    passed: bool
    metrics: dict = field(repr=False)
    failed: dict[str, int] = field(default_factory=dict)  # failed requests by error kind
    first_failure: str | None = None  # one failed request's whole reason, to show the user


@dataclass
class CapacityResult:
    """`rate` is the highest passing rate probed (0.0 when even `min_rate` fails)."""

    rate: float
    target: float
    slos: dict
    probes: list[Probe]
    bracket: tuple[float, float]  # (highest pass, lowest fail)

    @property
    def metrics(self) -> dict | None:
        passing = [p for p in self.probes if p.passed and p.rate == self.rate]
        return passing[0].metrics if passing else None


def probe_rate(cluster: ClusterConfig, workload: Workload, rate: float, slos: dict, target: float,
               warmup: int = 0, seed: int = 0) -> Probe:
    """Simulate the workload rescaled to `rate`: its SLO attainment, metrics and failures."""
    from core_api.faults import failures_by_kind
    from sim.cluster import SimCluster

    records = SimCluster(cluster).run(workload.scaled_to_rate(rate), seed=seed).records[warmup:]
    metrics = summarize(records, slos)
    att = metrics["slo_attainment"]
    first = next((r.reason for r in records if r.status != "ok"), None)
    return Probe(rate, att, att >= target, metrics, failures_by_kind(records), first)


def attainment_at(cluster: ClusterConfig, workload: Workload, rate: float, slos: dict,
                  warmup: int = 0, seed: int = 0) -> tuple[float, dict]:
    """SLO attainment (and all metrics) of the workload rescaled to `rate`."""
    p = probe_rate(cluster, workload, rate, slos, 1.0, warmup, seed)
    return p.attainment, p.metrics


def find_capacity(cluster: ClusterConfig, workload: Workload, slos: dict, target: float = 0.9,
                  start_rate: float = 1.0, rel_tol: float = 0.02, min_rate: float = 1e-3,
                  max_rate: float = 1e5, warmup: int = 0, seed: int = 0,
                  on_probe: Callable[[Probe], None] | None = None) -> CapacityResult:
    """Bisection for the highest rate with slo_attainment >= target. See the module docstring."""
    if not slos:
        raise ValueError("capacity needs at least one SLO (ttft_ms, tpot_ms or e2el_ms)")
    if not 0 < target <= 1:
        raise ValueError(f"target attainment must be in (0, 1], got {target}")
    if len(workload) < 2:
        raise ValueError("capacity needs a workload of at least 2 requests (a rate needs two arrivals)")
    probes: list[Probe] = []

    def probe(rate: float) -> bool:
        p = probe_rate(cluster, workload, rate, slos, target, warmup, seed)
        probes.append(p)
        if on_probe:
            on_probe(p)
        return p.passed

    lo, hi = 0.0, None  # highest pass, lowest fail
    rate = start_rate
    if probe(rate):
        lo = rate
        while hi is None:
            rate *= 2
            if rate > max_rate:
                raise ValueError(f"SLOs still met at {lo:g} req/s; raise max_rate")
            if probe(rate):
                lo = rate
            else:
                hi = rate
    else:
        hi = rate
        while lo == 0.0:
            rate /= 2
            if rate < min_rate:
                return CapacityResult(0.0, target, dict(slos), probes, (0.0, hi))
            if probe(rate):
                lo = rate
            else:
                hi = rate
    while (hi - lo) > rel_tol * lo:
        mid = (lo + hi) / 2
        if probe(mid):
            lo = mid
        else:
            hi = mid
    return CapacityResult(lo, target, dict(slos), probes, (lo, hi))


# -- command line ------------------------------------------------------------------------------

def add_parser(sub) -> None:
    from experiments.trace_args import add_trace_arguments

    p = sub.add_parser("capacity", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="SimConfig file (YAML/JSON); default: the built-in sim config")
    p.add_argument("--strategy", help="strategy name (overrides the config's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON", help="strategy parameter")
    p.add_argument("--num-requests", type=positive_int, help="requests in the workload")
    p.add_argument("--seed", type=int, help="workload seed")
    p.add_argument("--profile", type=Path, help="fitted cost profile JSON (instead of the roofline model)")
    add_slo_arguments(p, "required SLO attainment (default 0.9)")
    p.add_argument("--start-rate", type=positive_float, help="first rate probed (default: the config's or trace's rate)")
    p.add_argument("--rel-tol", type=positive_float, default=0.02,
                   help="stop when the bracket is this tight (relative)")
    p.add_argument("--warmup", type=int, default=0, help="leading requests excluded from metrics")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    add_trace_arguments(p)


def slos_from(args: argparse.Namespace) -> dict:
    """The SLOs given on the command line; at least one is required."""
    slos = {k: v for k, v in (("ttft_ms", args.ttft_slo), ("tpot_ms", args.tpot_slo),
                              ("e2el_ms", args.e2el_slo)) if v is not None}
    if not slos:
        raise ValueError("give at least one of --ttft-slo, --tpot-slo, --e2el-slo")
    return slos


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from core_api.strategy import StrategyError
    from core_api.workload import generate
    from experiments.sim_cli import build_config
    from experiments.trace_args import trace_spec_from_args

    try:
        slos = slos_from(args)
        args.rate = None  # the search sets the rate
        config = build_config(args)
        trace = trace_spec_from_args(args, seed=config.seed)
        if trace is not None:
            workload = trace.load()
            start = args.start_rate or workload.mean_rate
        else:
            workload = generate(config.workload.model_copy(update={"seed": config.seed}))
            start = args.start_rate or config.workload.arrival.rate

        def show(p: Probe) -> None:
            failed = (f"  ({sum(p.failed.values())} failed: " + ", ".join(f"{n} {k}" for k, n in p.failed.items())
                      + ")") if p.failed else ""
            print(f"  {p.rate:10.3f} req/s  attainment {p.attainment:6.1%}  {'pass' if p.passed else 'fail'}{failed}",
                  file=sys.stderr)

        res = find_capacity(config.cluster, workload, slos, args.target, start, args.rel_tol,
                            warmup=args.warmup, seed=config.seed, on_probe=show)
    except (ValidationError, ValueError, StrategyError, FileNotFoundError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    slo_text = ", ".join(f"{k} <= {v:g}" for k, v in slos.items())
    always = min(res.probes, key=lambda p: p.rate)
    if always.failed:  # failures even at the lowest rate probed: the load is not what fails them
        print(f"note: {sum(always.failed.values())} request(s) failed even at {always.rate:.3g} req/s, so "
              f"attainment cannot exceed {always.attainment:.1%} at any rate; e.g. {always.first_failure}",
              file=sys.stderr)
    if args.json:
        print(json.dumps({"capacity_rps": res.rate, "target": res.target, "slos": res.slos,
                          "bracket": res.bracket, "probes": [(p.rate, p.attainment) for p in res.probes]}))
    else:
        print(f"capacity of {config.cluster.strategy.name}: {res.rate:.3f} req/s "
              f"({res.target:.0%} of requests within {slo_text}; bracket {res.bracket[0]:.3f}..{res.bracket[1]:.3f}, "
              f"{len(res.probes)} simulations)")
    return 0
