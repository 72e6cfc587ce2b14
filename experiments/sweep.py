"""`microserving sweep`: run a sweep file's runs in parallel processes, one JSON line each.

Why processes: one simulation is single-threaded Python, so a sweep scales with cores only
across processes. Workers receive a RunSpec as JSON and return their result line as JSON
(nothing but text crosses the boundary). The parent alone appends to the results file and
flushes after every line, so an interrupted sweep keeps every finished run and ``--resume``
skips them by key. A run that raises becomes a line with ``status: "error"`` and the error;
the sweep goes on.

Result line: key, labels (cluster, strategy, workload, rate, seed), config (the RunSpec
without labels), status, metrics (core_api.metrics.summarize over the measured requests:
the first ``warmup_requests`` arrivals are left out), samples (per-request ttft/tpot/e2el ms,
when the spec asks), sim_time_s, wall_s, and for traces the skipped-line count.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from core_api.config_file import parse_json
from core_api.validation_errors import error_text
from experiments.sweep_spec import RunSpec, SweepSpec, load_spec

__all__ = ["RayTarget", "SweepProgress", "execute", "finished_keys", "read_results", "run_one", "run_sweep"]


def run_one(run: RunSpec) -> dict:
    """Simulate one run and summarise it; any exception is caught and returned as the error."""
    import warnings

    from core_api.metrics import summarize
    from core_api.workload import generate
    from sim.cluster import SimCluster

    line = line_head(run)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # skipped trace lines are counted in the line instead
            workload = run.trace.load() if run.trace is not None else generate(run.workload, lazy=True)
        result = SimCluster(run.cluster).run(workload, seed=run.seed)
        measured = result.records[run.warmup_requests:]  # records are in arrival order
        if not measured:
            raise ValueError(f"no requests left after {run.warmup_requests} warm-up requests "
                             f"(the workload has {len(result.records)})")
        line |= {"status": "ok", "num_requests": len(result.records), "measured_requests": len(measured),
                 "metrics": summarize(measured, run.slos or None, run.percentiles),
                 "sim_time_s": result.sim_time_s}
        if run.save_samples:
            line["samples"] = samples(measured)
        if getattr(workload, "skipped", None):
            line["trace_skipped_lines"] = len(workload.skipped)
    except Exception as exc:  # noqa: BLE001 - one bad run must not stop a sweep
        line |= {"status": "error", "error": f"{type(exc).__name__}: {exc}",
                 "traceback": traceback.format_exc(limit=-3)}
    line["wall_s"] = time.perf_counter() - t0
    return line


def line_head(run: RunSpec) -> dict:
    """What every result line of a run starts with, however the run ended."""
    return {"key": run.key, "labels": run.labels, "config": run.config()}


def samples(records) -> dict[str, list[float]]:
    """Per-request latencies (ms, 3 decimals) of ok records: enough for CDFs, small in JSON."""
    ttft, tpot, e2el = [], [], []
    for r in records:
        if r.status != "ok" or not r.output_len:
            continue
        ttft.append(round((r.first_token_time - r.arrival_time) * 1e3, 3))
        e2el.append(round((r.finish_time - r.arrival_time) * 1e3, 3))
        if r.output_len > 1:
            tpot.append(round((r.finish_time - r.first_token_time) / (r.output_len - 1) * 1e3, 3))
    return {"ttft_ms": ttft, "tpot_ms": tpot, "e2el_ms": e2el}


def _worker(run_json: str) -> str:
    return json.dumps(run_one(RunSpec.model_validate_json(run_json)), allow_nan=True)


@dataclass(frozen=True)
class RayTarget:
    """Run on Ray instead of local processes (experiments.sweep_ray)."""

    address: str | None = None  # None: a local Ray instance; "auto", "ray://HEAD:10001", ...
    working_dir: str | None = None  # ship this folder to the workers (Ray runtime_env)


def execute(runs: list[RunSpec], jobs: int | None = None, ray: RayTarget | None = None) -> Iterable[dict]:
    """Result lines as runs finish (completion order). jobs=1 runs in this process."""
    if ray is not None:
        from experiments.sweep_ray import execute_on_ray

        yield from execute_on_ray(runs, ray.address, jobs, ray.working_dir)
        return
    jobs = min(jobs or os.cpu_count() or 1, max(1, len(runs)))
    if jobs == 1:
        for run in runs:
            yield run_one(run)
        return
    with multiprocessing.get_context().Pool(jobs) as pool:
        for text in pool.imap_unordered(_worker, [r.model_dump_json() for r in runs], chunksize=1):
            yield json.loads(text)


def read_results(path: str | Path, latest: bool = True) -> list[dict]:
    """Result lines of a file; unreadable lines (a run cut off mid-write) are ignored.

    With ``latest``, only the last line per key is kept (a rerun replaces an earlier error).
    """
    out: dict[str, dict] | list[dict] = {} if latest else []
    path = Path(path)
    if not path.exists():
        return []
    for text in path.read_text().splitlines():
        try:
            line = parse_json(text)
        except json.JSONDecodeError:
            continue
        if not isinstance(line, dict) or "key" not in line:
            continue
        if latest:
            out.pop(line["key"], None)
            out[line["key"]] = line
        else:
            out.append(line)
    return list(out.values()) if latest else out


def finished_keys(path: str | Path, include_errors: bool = True) -> set[str]:
    return {r["key"] for r in read_results(path) if include_errors or r.get("status") == "ok"}


@dataclass
class SweepProgress:
    total: int
    skipped: int = 0
    done: int = 0
    failed: int = 0
    started: float = 0.0
    last: dict | None = None

    @property
    def todo(self) -> int:
        return self.total - self.skipped

    def eta_s(self) -> float | None:
        if not self.done:
            return None
        return (time.perf_counter() - self.started) / self.done * (self.todo - self.done)


def run_sweep(spec: SweepSpec, out: str | Path, jobs: int | None = None, resume: bool = False,
              retry_failed: bool = False, progress: Callable[[SweepProgress], None] | None = None,
              ray: RayTarget | None = None) -> SweepProgress:
    """Run every run not yet in `out` (with `resume`), appending result lines as they finish."""
    out = Path(out)
    runs = spec.runs()
    keys = [r.key for r in runs]
    if len(set(keys)) != len(keys):  # identical runs (e.g. a grid that repeats a value): run once
        runs = list({r.key: r for r in runs}.values())
    state = SweepProgress(total=len(runs), started=time.perf_counter())
    if resume:
        done = finished_keys(out, include_errors=not retry_failed)
        todo = [r for r in runs if r.key not in done]
        state.skipped = len(runs) - len(todo)
        runs = todo
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and out.stat().st_size:
        with open(out, "rb") as f:  # a line cut off by a crash must not swallow the next one
            f.seek(-1, os.SEEK_END)
            needs_newline = f.read(1) != b"\n"
    else:
        needs_newline = False
    if progress:
        progress(state)
    with open(out, "a") as f:
        if needs_newline:
            f.write("\n")
        for line in execute(runs, jobs, ray):
            f.write(json.dumps(line, allow_nan=True) + "\n")
            f.flush()
            state.done += 1
            state.failed += line["status"] != "ok"
            state.last = line
            if progress:
                progress(state)
    return state


# -- command line ------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("sweep", description=__doc__.splitlines()[0])
    p.add_argument("spec", type=Path, help="sweep file (YAML or JSON), e.g. experiments/specs/default_sweep.yaml")
    p.add_argument("-o", "--out", type=Path, default=Path("results/sweep.jsonl"), help="results JSONL")
    p.add_argument("-j", "--jobs", type=int, default=None,
                   help="worker processes (default: all cores); with --ray, runs in flight (default: all)")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run on a Ray cluster (extra [ray]): no ADDRESS starts a local Ray instance, "
                        "'auto' joins this node's cluster, 'ray://HEAD:10001' a remote one")
    p.add_argument("--ray-working-dir", metavar="DIR",
                   help="with --ray: ship DIR (this checkout) to the workers instead of relying on an install there")
    p.add_argument("--resume", action="store_true", help="skip runs whose key is already in --out")
    p.add_argument("--retry-failed", action="store_true", help="with --resume: rerun runs that errored")
    p.add_argument("--overwrite", action="store_true", help="delete --out first")
    p.add_argument("--plots", type=Path, default=None, help="figure folder (default: next to --out)")
    p.add_argument("--no-plots", action="store_true", help="do not draw figures")
    p.add_argument("--dry-run", action="store_true", help="list the runs and exit")


def print_progress(state: SweepProgress, stream=None, name: str = "sweep") -> None:
    """One progress line: rewritten in place on a terminal, one per run in a log.

    Not tqdm: a bar redrawn with carriage returns garbles the log of a sweep run under nohup or a
    batch scheduler, where one plain line per finished run (with its labels and outcome) is what
    a user reads back."""
    stream = stream or sys.stderr  # looked up now, not at import: whoever redirected stderr gets it
    elapsed = time.perf_counter() - state.started
    eta = state.eta_s()
    last = ""
    if state.last:
        lb = state.last["labels"]
        where = "/".join(str(lb[k]) for k in ("cluster", "strategy", "workload") if k in lb)
        point = "".join(f" {k}={lb[k]}" for k in ("rate", "seed") if k in lb)
        last = f" | last: {where}{point} {state.last['status']} {state.last['wall_s']:.1f}s"
    text = (f"[{name}] {state.done}/{state.todo} done"
            + (f" ({state.skipped} resumed)" if state.skipped else "")
            + (f", {state.failed} failed" if state.failed else "")
            + f", {elapsed:.0f}s elapsed" + (f", eta {eta:.0f}s" if eta is not None else "") + last)
    if stream.isatty():
        stream.write("\r\033[K" + text[:200] + ("\n" if state.done == state.todo else ""))
    else:
        stream.write(text + "\n")
    stream.flush()


def run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    try:
        spec = load_spec(args.spec)
        runs = spec.runs()
    except (OSError, ValueError, ValidationError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    if args.dry_run:
        for r in runs:
            print(r.key, json.dumps(r.labels))
        print(f"{len(runs)} runs", file=sys.stderr)
        return 0
    if args.out.exists() and args.out.stat().st_size and not (args.resume or args.overwrite):
        print(f"error: {args.out} exists; pass --resume to skip finished runs or --overwrite to start over",
              file=sys.stderr)
        return 2
    if args.overwrite and args.out.exists():
        args.out.unlink()
    t0 = time.perf_counter()
    if args.ray_working_dir and args.ray is None:
        print("error: --ray-working-dir goes with --ray", file=sys.stderr)
        return 2
    ray = RayTarget(args.ray or None, args.ray_working_dir) if args.ray is not None else None
    from experiments.sweep_ray import RayUnavailable

    try:
        state = run_sweep(spec, args.out, args.jobs, args.resume, args.retry_failed, print_progress, ray)
    except RayUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{state.done} runs ({state.failed} failed, {state.skipped} already done) in "
          f"{time.perf_counter() - t0:.1f} s -> {args.out}")
    errors = [r for r in read_results(args.out) if r.get("status") != "ok"]
    for r in errors[:5]:
        print(f"  failed {r['labels']}: {r['error']}", file=sys.stderr)
    if not args.no_plots:
        from experiments.plots import plot_sweep

        folder = args.plots or args.out.with_name(args.out.stem + "_plots")
        for path in plot_sweep(read_results(args.out), folder, slos=spec.slos):
            print(f"wrote {path}")
    return 1 if state.failed and state.failed == state.done else 0
