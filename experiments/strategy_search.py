"""`microserving search`: the best strategy and layout for a workload, an SLO and a GPU budget.

Enumerates, for a fixed number of GPUs of one kind: tensor-parallel degree per engine (every
degree that divides the budget and leaves room for KV), and on the resulting n engines every
registered strategy that fits: data parallel (round_robin, least_loaded, prefix_aware when the
workload shares prefixes), PD with every P:D split, balanced PD with every split and ratio,
adaptive with every split.
Each candidate is simulated on the same workload (the sweep runner's parallel executor), then
ranked by SLO attainment, then p99 E2E latency - or, with ``capacity=True``, by the
highest rate that meets the attainment target (a bisection per candidate).

Layouts are homogeneous (all engines share one TP degree); mixed layouts (e.g. TP4 prefill
with TP2 decode) fit the cluster config but are not enumerated here.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

from core_api.traces import TraceSpec
from core_api.validation_errors import error_text
from core_api.workload import WorkloadSpec
from experiments.arg_types import add_slo_arguments, positive_float, positive_int
from experiments.sweep import SweepProgress
from experiments.sweep_spec import RunSpec
from sim.config import ClusterConfig, EngineConfig, StrategyConfig


@dataclass
class Candidate:
    label: str
    tp: int
    engines: int
    strategy: StrategyConfig


def fits(gpu: str, model: str, dtype: str | None, tp: int, page_size: int) -> bool:
    from sim.hardware import get_gpu, get_model, kv_pages_for

    try:
        return kv_pages_for(get_gpu(gpu), get_model(model, dtype), tp, page_size) > 0
    except ValueError:
        return False


def candidates(gpus: int, gpu: str, model: str, dtype: str | None = None, tps: tuple[int, ...] = (1, 2, 4, 8),
               ratios: tuple[float, ...] = (0.1, 0.2, 0.3), shared_prefixes: bool = False,
               page_size: int = 16, strategies: list[str] | None = None) -> list[Candidate]:
    """Every (TP degree, strategy, params) worth simulating; unknown/unregistered ones are left out."""
    from core_api.strategy import known_strategies

    known = set(known_strategies())
    wanted = set(strategies) if strategies else known
    unknown = sorted(wanted - known)
    if unknown:
        raise ValueError(f"unknown strategies {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    out = []
    for tp in sorted(t for t in tps if gpus % t == 0):
        if not fits(gpu, model, dtype, tp, page_size):
            continue
        n = gpus // tp
        ids = [f"e{i}" for i in range(n)]
        shape = f"{n}xTP{tp}"

        def add(name: str, label: str, params: dict | None = None, tp=tp, n=n) -> None:
            if name in known and name in wanted:
                out.append(Candidate(label, tp, n, StrategyConfig(name=name, params=params or {})))

        add("round_robin", f"{shape} round_robin" if n > 1 else f"1xTP{tp}")
        if n > 1:
            add("least_loaded", f"{shape} least_loaded")
            if shared_prefixes:
                add("prefix_aware", f"{shape} prefix_aware")
            for p in range(1, n):
                roles = {"prefill": ids[:p], "decode": ids[p:]}
                add("pd", f"{shape} pd {p}P{n - p}D", roles)
                for r in ratios:
                    add("balanced_pd", f"{shape} balanced_pd {p}P{n - p}D ratio={r:g}", {**roles, "ratio": r})
                add("adaptive", f"{shape} adaptive {p}P{n - p}D", roles)
    return out


def cluster_for(c: Candidate, template: EngineConfig) -> ClusterConfig:
    engine = template.model_copy(update={"count": c.engines, "tp": c.tp, "id": None})
    return ClusterConfig(engines=[engine], strategy=c.strategy)


def _capacity_worker(task: str) -> str:
    from core_api.workload import generate
    from experiments.capacity import find_capacity

    t = json.loads(task)
    cluster = ClusterConfig.model_validate(t["cluster"])
    try:
        if "trace" in t:
            workload = TraceSpec.model_validate(t["trace"]).load()
            start = workload.mean_rate
        else:
            spec = WorkloadSpec.model_validate(t["workload"])
            workload, start = generate(spec), spec.arrival.rate
        res = find_capacity(cluster, workload, t["slos"], t["target"], start, t["rel_tol"], warmup=t["warmup"])
        return json.dumps({"capacity_rps": res.rate, "metrics": res.metrics or {}}, allow_nan=True)
    except Exception as exc:  # noqa: BLE001 - one candidate failing must not end the search
        return json.dumps({"error": f"{type(exc).__name__}: {exc}"})


def search(template: EngineConfig, gpus: int, workload: WorkloadSpec | TraceSpec, slos: dict, *,
           capacity: bool = False,
           target: float = 0.9, warmup: int = 0, jobs: int | None = None, rel_tol: float = 0.03,
           progress: Callable[[SweepProgress], None] | None = None, **enumerate_kw) -> list[dict]:
    """Simulate every candidate; rows sorted best first (errors last). `progress` is told after
    each candidate (sweep's printer shows it)."""
    from experiments.sweep import execute

    model = template.model if isinstance(template.model, str) else template.model.name
    gpu = template.gpu if isinstance(template.gpu, str) else template.gpu.name
    is_trace = isinstance(workload, TraceSpec)
    shared = workload.format == "mooncake" if is_trace else workload.prefix is not None
    cands = candidates(gpus, gpu, model, template.dtype, shared_prefixes=shared,
                       page_size=template.page_size, **enumerate_kw)
    if not cands:
        raise ValueError(f"no layout of {gpus} x {gpu} fits {model}")
    rows: list[dict] = []
    state = SweepProgress(total=len(cands), started=time.perf_counter())

    def tell(label: str, ok: bool, wall_s: float) -> None:
        state.done += 1
        state.failed += not ok
        state.last = {"labels": {"strategy": label}, "status": "ok" if ok else "error", "wall_s": wall_s}
        if progress:
            progress(state)

    if capacity:
        what = {"trace" if is_trace else "workload": workload.model_dump(mode="json")}
        tasks = [json.dumps({"cluster": cluster_for(c, template).model_dump(mode="json"), **what, "slos": slos,
                             "target": target, "rel_tol": rel_tol, "warmup": warmup}) for c in cands]
        n_jobs = min(jobs or os.cpu_count() or 1, len(tasks))
        with multiprocessing.get_context().Pool(n_jobs) if n_jobs > 1 else nullcontext() as pool:
            t0 = time.perf_counter()
            results = pool.imap(_capacity_worker, tasks, chunksize=1) if pool else map(_capacity_worker, tasks)
            for c, text in zip(cands, results):
                row = {"label": c.label, "strategy": c.strategy.model_dump(), **json.loads(text)}
                rows.append(row)
                tell(c.label, "error" not in row, time.perf_counter() - t0)
                t0 = time.perf_counter()
        rows.sort(key=lambda r: ("error" in r, -r.get("capacity_rps", 0.0)))
        return rows
    source = {"trace": workload} if is_trace else {"workload": workload, "seed": workload.seed}
    runs = [RunSpec(labels={"strategy": c.label}, cluster=cluster_for(c, template), **source,
                    warmup_requests=warmup, slos=slos, save_samples=False) for c in cands]
    by_label = {c.label: c for c in cands}
    for line in execute(runs, jobs):
        c = by_label[line["labels"]["strategy"]]
        row = {"label": c.label, "strategy": c.strategy.model_dump()}
        row |= {"metrics": line["metrics"]} if line["status"] == "ok" else {"error": line["error"]}
        rows.append(row)
        tell(c.label, line["status"] == "ok", line.get("wall_s", 0.0))

    def rank(r: dict):
        m = r.get("metrics") or {}
        return ("error" in r, -round(m.get("slo_attainment", 0.0), 3), m.get("p99_e2el_ms", float("inf")))

    rows.sort(key=rank)
    return rows


COLUMNS = (("attain", "slo_attainment", "{:.1%}"), ("goodput", "request_goodput", "{:.2f}"),
           ("meanTTFT", "mean_ttft_ms", "{:.1f}"), ("p99TTFT", "p99_ttft_ms", "{:.1f}"),
           ("meanTPOT", "mean_tpot_ms", "{:.1f}"), ("p99TPOT", "p99_tpot_ms", "{:.1f}"),
           ("meanE2E", "mean_e2el_ms", "{:.1f}"), ("p99E2E", "p99_e2el_ms", "{:.1f}"))


def format_rows(rows: list[dict], top: int, capacity: bool) -> str:
    """A fixed-width table of the best `top` rows (latencies in ms)."""
    width = max(len(r["label"]) for r in rows[:top]) + 2
    head = (["capacity"] if capacity else []) + [c[0] for c in COLUMNS]
    lines = [f"{'#':>3} {'candidate':<{width}}" + "".join(f"{h:>10}" for h in head)]
    for i, r in enumerate(rows[:top], 1):
        if "error" in r:
            lines.append(f"{i:>3} {r['label']:<{width}}  error: {r['error'][:80]}")
            continue
        m = r.get("metrics") or {}
        cells = [f"{r['capacity_rps']:.3f}"] if capacity else []
        cells += [fmt.format(m[k]) if k in m else "-" for _, k, fmt in COLUMNS]
        lines.append(f"{i:>3} {r['label']:<{width}}" + "".join(f"{c:>10}" for c in cells))
    return "\n".join(lines)


# -- command line ------------------------------------------------------------------------------

def add_parser(sub) -> None:
    from experiments.trace_args import add_trace_arguments

    p = sub.add_parser("search", description=__doc__.splitlines()[0])
    p.add_argument("--config", help="SimConfig file: its workload and first engine are the template")
    p.add_argument("--gpus", type=int, default=8, help="GPU budget (default 8)")
    p.add_argument("--gpu", help="GPU preset (default: the template's, H100-SXM)")
    p.add_argument("--model", help="model preset (default: the template's)")
    p.add_argument("--dtype", choices=["bf16", "fp8"], help="weight/KV dtype override")
    p.add_argument("--tp", default="1,2,4,8", help="TP degrees to try (default 1,2,4,8)")
    p.add_argument("--ratios", default="0.1,0.2,0.3", help="balanced PD ratios to try")
    p.add_argument("--strategies", help="comma-separated strategy names to consider (default: all known)")
    p.add_argument("--rate", type=positive_float, help="request rate (req/s); the capacity search starts here")
    p.add_argument("--num-requests", type=positive_int, help="requests in the workload")
    p.add_argument("--prompt-len", help="MEAN[,STD]: normal prompt lengths instead of the template's")
    p.add_argument("--output-len", help="MEAN[,STD]: normal output lengths instead of the template's")
    p.add_argument("--seed", type=int, help="workload seed")
    add_slo_arguments(p, "attainment target for --capacity")
    p.add_argument("--capacity", action="store_true", help="rank by the highest rate meeting the SLOs")
    p.add_argument("--warmup", type=int, default=0, help="leading requests excluded from metrics")
    p.add_argument("--top", type=int, default=10, help="rows to print")
    p.add_argument("-j", "--jobs", type=int, help="worker processes (default: all cores)")
    p.add_argument("--json", action="store_true", help="print all rows as JSON")
    add_trace_arguments(p)


def _length(text: str) -> dict:
    mean, _, std = text.partition(",")
    return {"kind": "normal", "mean": float(mean), "std": float(std or 0.0)}


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from experiments.capacity import slos_from
    from experiments.sweep import print_progress
    from experiments.trace_args import trace_spec_from_args
    from sim.config import default_config, load_config

    try:
        slos = slos_from(args)
        config = load_config(args.config) if args.config else default_config()
        w = config.workload.model_dump(mode="json")
        if args.rate is not None:
            w["arrival"]["rate"] = args.rate
        if args.num_requests is not None:
            w["num_requests"] = args.num_requests
        if args.seed is not None:
            w["seed"] = args.seed
        if args.prompt_len:
            w["prompt_len"] = _length(args.prompt_len)
        if args.output_len:
            w["output_len"] = _length(args.output_len)
        workload = trace_spec_from_args(args, args.rate, w["seed"]) or WorkloadSpec.model_validate(w)
        template = config.cluster.engines[0].model_copy(
            update={k: v for k, v in (("gpu", args.gpu), ("model", args.model), ("dtype", args.dtype)) if v})
        rows = search(template, args.gpus, workload, slos, capacity=args.capacity, target=args.target,
                      warmup=args.warmup, jobs=args.jobs,
                      tps=tuple(int(t) for t in args.tp.split(",")),
                      ratios=tuple(float(r) for r in args.ratios.split(",")),
                      strategies=args.strategies.split(",") if args.strategies else None,
                      progress=None if args.json else partial(print_progress, name="search"))
    except (ValidationError, ValueError, OSError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, allow_nan=True))
        return 0
    slo_text = ", ".join(f"{k} <= {v:g}" for k, v in slos.items())
    what = (f"trace {workload.path}" if isinstance(workload, TraceSpec) else
            f"{workload.num_requests} requests" + ("" if args.capacity else f" at {workload.arrival.rate:g} req/s"))
    print(f"{len(rows)} candidates on {args.gpus} x {template.gpu} for {template.model}"
          f"{' ' + template.dtype if template.dtype else ''}; {what}; SLO {slo_text}")
    print(format_rows(rows, args.top, args.capacity))
    return 0
