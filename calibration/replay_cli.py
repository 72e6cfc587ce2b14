"""`microserving replay RUN_DIR`: a real run's requests through the simulator, real vs simulated.

    microserving replay RUN_DIR --json           # priced by the best profile shipped for its GPU/model/TP
    microserving replay runs/RTX4090_Llama-3.1-8B --profile calibration/profiles/rtx4090-llama-3.1-8b-tp1.json
    microserving replay RUN_DIR --cost-model roofline --json
    microserving replay RUN_DIR --profile P.json --out results/replay   # CSV, CDF and queue plots

RUN_DIR holds requests.jsonl and meta.json (and optionally timeseries.csv and the workload with
token ids); see calibration/real_run.py for the format and the metric definitions.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

from core_api.validation_errors import error_text
from experiments.arg_types import non_negative_int


def add_parser(sub) -> None:
    p = sub.add_parser("replay", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", type=Path, help="directory with requests.jsonl and meta.json")
    cost = p.add_mutually_exclusive_group()
    cost.add_argument("--profile", type=Path, help="cost profile JSON (fitted or measured layer tables)")
    cost.add_argument("--cost-model", choices=("auto", "roofline"), default="auto",
                      help="auto (default): the best profile shipped for the run's GPU, model and TP (a measured "
                           "layer profile, else the roofline fitted on that GPU, else the roofline defaults); "
                           "roofline: the defaults fitted on every GPU")
    p.add_argument("--gpu", help="GPU preset, overriding what meta.json says")
    p.add_argument("--model", help="model preset, Hugging Face id or config.json path, overriding meta.json")
    p.add_argument("--workload", type=Path, help="workload JSONL with input_tok_ids (default: meta.json's dataset_path)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed for prompts drawn when no token ids are known")
    p.add_argument("--out", type=Path, help="write requests.csv, metrics.json, queue.csv and plots here")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _shown(cost_model: str) -> str:
    """A profile's path relative to the working directory when it lies below it (shorter to read)."""
    path = Path(cost_model)
    try:
        return str(path.resolve().relative_to(Path.cwd())) if path.is_absolute() else cost_model
    except ValueError:
        return cost_model


def _table(name: str, cost: str, metrics: dict) -> str:
    lines = [f"replay of {name} ({cost})", f"{'metric':<18}{'real':>12}{'sim':>12}{'diff':>9}"]
    for key, v in metrics.items():
        lines.append(f"{key:<18}{v['real']:>12.1f}{v['sim']:>12.1f}{v['diff_pct']:>+8.1f}%")
    return "\n".join(lines)


def _sim_queue_at(traces: list[list], ticks: list[float]) -> list[tuple[float, int, int]]:
    """The simulated engines' (running, waiting), summed over engines, as of each tick (each
    engine's state after its last decision), as the run's own queue log counts them."""
    out, pos = [], [0] * len(traces)
    for t in ticks:
        running = waiting = 0
        for k, trace in enumerate(traces):
            i = pos[k]
            while i < len(trace) and trace[i][0] <= t:
                i += 1
            pos[k] = i
            if i:
                running, waiting = running + trace[i - 1][1], waiting + trace[i - 1][2]
        out.append((t, running, waiting))
    return out


def _write_outputs(replayed, out: Path, cost: str) -> list[Path]:
    import numpy as np

    out.mkdir(parents=True, exist_ok=True)
    run, written = replayed.run, []
    real, sim = run.latencies(), replayed.sim_latencies()
    path = out / "requests.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["request_id", "input_toks", "output_toks", "arrival_s",
                    *(f"{side}_{m}_ms" for m in ("ttft", "tpot", "e2el") for side in ("real", "sim"))])
        for i, (line, t) in enumerate(zip(run.requests, run.arrivals())):
            w.writerow([line.request_id, line.input_toks, line.output_toks, f"{t:.6f}",
                        *(f"{d[m][i] * 1000:.3f}" for m in ("ttft", "tpot", "e2el") for d in (real, sim))])
    written.append(path)
    path = out / "metrics.json"
    path.write_text(json.dumps({"run": str(run.path), "cost_model": cost, "metrics": replayed.metrics()}, indent=2))
    written.append(path)
    ticks = list(run.timeseries["t"]) if run.timeseries is not None else \
        list(np.arange(1.0, math.ceil(replayed.result.sim_time_s) + 1))
    sim_q = _sim_queue_at(replayed.queue_traces, ticks)
    path = out / "queue.csv"
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["t", "sim_running", "sim_waiting", "real_running", "real_waiting"])
        for j, (t, r, q) in enumerate(sim_q):
            rr = run.timeseries["running"][j] if run.timeseries is not None else ""
            rq = run.timeseries["waiting"][j] if run.timeseries is not None else ""
            w.writerow([t, r, q, rr, rq])
    written.append(path)
    written += _plots(out, run, real, sim, sim_q)
    return written


def _plots(out: Path, run, real: dict, sim: dict, sim_q: list) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for ax, (m, label) in zip(axes, (("ttft", "TTFT"), ("tpot", "TPOT"), ("e2el", "latency"))):
        seconds = max(real[m].max(), sim[m].max()) > 10  # long queues read better in seconds
        for d, name, style in ((real, "real", "-"), (sim, "simulated", "--")):
            x = np.sort(d[m] * (1 if seconds else 1000))
            ax.plot(x, np.arange(1, x.size + 1) / x.size, style, label=name)
        ax.set_xlabel(f"{label} ({'s' if seconds else 'ms'})")
        ax.set_ylabel("fraction of requests")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"{run.name}: real vs simulated, {len(run.requests)} requests")
    fig.tight_layout()
    paths = [out / "cdf.png"]
    fig.savefig(paths[0], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 3.8))
    t = [s[0] for s in sim_q]
    ax.plot(t, [s[1] for s in sim_q], "--", color="C0", label="running (sim)")
    ax.plot(t, [s[2] for s in sim_q], "--", color="C1", label="waiting (sim)")
    if run.timeseries is not None:
        ax.plot(run.timeseries["t"], run.timeseries["running"], color="C0", label="running (real)")
        ax.plot(run.timeseries["t"], run.timeseries["waiting"], color="C1", label="waiting (real)")
    ax.set_xlabel("time since the first arrival (s)")
    ax.set_ylabel("requests")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"{run.name}: engine queue over time")
    fig.tight_layout()
    paths.append(out / "queue.png")
    fig.savefig(paths[1], dpi=110)
    plt.close(fig)
    return paths


def run(args: argparse.Namespace) -> int:
    from calibration.real_run import RunDirError, load_run
    from calibration.replay import replay
    from experiments.sim_cli import PROGRESS_FROM, progress_printer
    from sim.profile import ProfileError

    try:
        real_run = load_run(args.run_dir, args.workload)
        progress = progress_printer("replay") if len(real_run.requests) >= PROGRESS_FROM else None
        replayed = replay(real_run, str(args.profile) if args.profile else args.cost_model, gpu=args.gpu,
                          model=args.model, seed=args.seed, progress=progress)
    except (RunDirError, ProfileError, ValueError, OSError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    for warning in real_run.warnings + replayed.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    cost = _shown(replayed.cost_model)
    metrics = replayed.metrics()
    if args.json:
        print(json.dumps({"run": str(real_run.path), "cost_model": cost,
                          "sim_wall_s": round(replayed.result.wall_time_s, 3), "metrics": metrics,
                          "warnings": real_run.warnings + replayed.warnings}))
    else:
        print(_table(real_run.name, cost, metrics))
        ids = "real token ids" if real_run.prompts is not None else "random token ids (no workload file found)"
        print(f"{len(real_run.requests)} requests, prompts with {ids}; simulated in "
              f"{replayed.result.wall_time_s:.2f} s")
    if args.out:
        for path in _write_outputs(replayed, args.out, cost):
            print(f"wrote {path}", file=sys.stderr)
    return 0
