"""`microserving plot`: figures from a sweep's JSONL (matplotlib, Agg: no display needed).

A line is one series: the label dimensions (cluster, strategy, workload) that differ across
the results, with seeds averaged (the band spans min..max over seeds when there are several).
Figures: any metric against any label or metric (`plot_metric`), the standard grid of mean and
p99 TTFT / TPOT / E2E against rate (`plot_latency_grid`), per-request CDFs at one rate
(`plot_cdf`, from the ``samples`` a sweep stores), and SLO attainment against rate.
"""
from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

SERIES_DIMS = ("cluster", "strategy", "workload")
# Colour, marker and dash vary together, so 14 series stay tellable apart (10 colours repeat).
MARKERS = "osD^v<>PXh*p"
DASHES = ("-", "--", "-.", ":")
GRID = (("mean_ttft_ms", "p99_ttft_ms"), ("mean_tpot_ms", "p99_tpot_ms"), ("mean_e2el_ms", "p99_e2el_ms"))
PRETTY = {"ttft": "TTFT", "tpot": "TPOT", "e2el": "E2E (JCT)", "itl": "ITL"}


def value(line: dict, name: str) -> float | str | None:
    """A label (rate, seed, strategy, ...) or a metric of a result line."""
    if name in line.get("labels", {}):
        return line["labels"][name]
    return line.get("metrics", {}).get(name)


def series_of(lines: Sequence[dict], dims: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Group ok lines by the label dimensions that vary (or the given ones)."""
    lines = [ln for ln in lines if ln.get("status") == "ok"]
    if dims is None:
        dims = [d for d in SERIES_DIMS if len({str(ln["labels"].get(d)) for ln in lines}) > 1] or ["strategy"]
    groups: dict[str, list[dict]] = defaultdict(list)
    for ln in lines:
        groups[" / ".join(str(ln["labels"].get(d)) for d in dims)].append(ln)
    return dict(groups)


def _curve(lines: list[dict], x: str, y: str):
    """x values, mean y, min y, max y over seeds (numeric x sorted; NaN y dropped)."""
    by_x: dict = defaultdict(list)
    for ln in lines:
        xv, yv = value(ln, x), value(ln, y)
        if xv is not None and yv is not None and not (isinstance(yv, float) and math.isnan(yv)):
            by_x[xv].append(float(yv))
    xs = sorted(by_x, key=lambda v: (isinstance(v, str), v))
    return xs, [sum(by_x[v]) / len(by_x[v]) for v in xs], [min(by_x[v]) for v in xs], [max(by_x[v]) for v in xs]


def pretty(name: str) -> str:
    for key, label in PRETTY.items():
        if name.endswith(f"_{key}_ms"):
            return f"{name.split('_')[0]} {label} (ms)".replace("mean", "Mean").replace("p99", "P99")
    return {"rate": "request rate (req/s)", "slo_attainment": "SLO attainment"}.get(name, name)


def draw(ax, lines: Sequence[dict], x: str, y: str, dims: Sequence[str] | None = None, logy: bool | None = None):
    """One curve per series; `logy` None: a log y axis when the values span two decades or more."""
    values = []
    for i, (name, group) in enumerate(sorted(series_of(lines, dims).items())):
        xs, mean, lo, hi = _curve(group, x, y)
        if not xs:
            continue
        (handle,) = ax.plot(xs, mean, marker=MARKERS[i % len(MARKERS)], ls=DASHES[i // 10 % len(DASHES)], ms=4,
                            label=name)
        if any(a != b for a, b in zip(lo, hi)):
            ax.fill_between(xs, lo, hi, alpha=0.15, color=handle.get_color())
        values += [v for v in lo + hi if v > 0]
    ax.set_xlabel(pretty(x))
    ax.set_ylabel(pretty(y))
    if logy or (logy is None and values and max(values) >= 100 * min(values)):
        ax.set_yscale("log")
    ax.grid(alpha=0.3)


def cluster_title(lines: Sequence[dict]) -> str:
    """What the runs simulated, e.g. '4 x H100-SXM, Llama-3.1-8B' (from the first run's config)."""
    engines = (((lines[0].get("config") or {}).get("cluster") or {}).get("engines") or []) if lines else []
    parts = []
    for e in engines:
        if isinstance(e, dict):
            model = e.get("model")
            model = model.get("name") if isinstance(model, dict) else model
            gpu = e.get("gpu")
            gpu = gpu.get("name") if isinstance(gpu, dict) else gpu
            parts.append(f"{e.get('count', 1)} x {gpu or 'default GPU'}, {model or 'default model'}")
    return "; ".join(parts)


def _save(fig, out: str | Path) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return out


def plot_metric(lines: Sequence[dict], out: str | Path, x: str = "rate", y: str = "p99_e2el_ms",
                title: str | None = None, logy: bool | None = None) -> Path:
    """`y` against `x`; one panel per workload when there are several (their rates differ)."""
    ok = [ln for ln in lines if ln.get("status") == "ok"]
    by_workload: dict[str, list[dict]] = defaultdict(list)
    for ln in ok:
        by_workload[str(ln["labels"].get("workload"))].append(ln)
    panels = sorted(by_workload.items()) if len(by_workload) > 1 else [("", ok)]
    dims = [d for d in SERIES_DIMS if d != "workload" and len({str(ln["labels"].get(d)) for ln in ok}) > 1]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, (workload, group) in zip(axes[0], panels):
        draw(ax, group, x, y, dims or ["strategy"], logy=logy)
        if workload:
            ax.set_title(f"workload {workload}", fontsize=9)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=7, frameon=False)
    what = cluster_title(ok)
    fig.suptitle((title or f"{pretty(y)} vs {pretty(x)}") + (f"\n{what}" if what else ""), fontsize=10)
    fig.tight_layout()
    return _save(fig, out)


def plot_latency_grid(lines: Sequence[dict], out: str | Path, x: str = "rate", title: str | None = None,
                      logy: bool | None = None) -> Path:
    """2 x 3 panels: mean (top) and p99 (bottom) of TTFT, TPOT and E2E against x."""
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    for col, (mean, p99) in enumerate(GRID):
        draw(axes[0][col], lines, x, mean, logy=logy)
        draw(axes[1][col], lines, x, p99, logy=logy)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(4, max(1, len(labels))), fontsize=8,
               bbox_to_anchor=(0.5, 1.02))
    what = cluster_title(lines)
    if title or what:
        fig.suptitle(" - ".join(t for t in (title, what) if t), y=1.06)
    fig.tight_layout()
    return _save(fig, out)


def plot_cdf(lines: Sequence[dict], out: str | Path, metric: str = "e2el_ms", rate: float | None = None) -> Path:
    """CDF of per-request `metric` at one rate (default: the highest), one curve per series."""
    lines = [ln for ln in lines if ln.get("status") == "ok" and ln.get("samples")]
    rates = sorted({ln["labels"]["rate"] for ln in lines if ln["labels"].get("rate") is not None})
    if rate is None and rates:
        rate = rates[-1]
    chosen = [ln for ln in lines if rate is None or ln["labels"].get("rate") == rate]
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, group in sorted(series_of(chosen).items()):
        vals = sorted(v for ln in group for v in ln["samples"].get(metric, []))
        if vals:
            ax.plot(vals, [(i + 1) / len(vals) for i in range(len(vals))], label=name)
    key = metric.removesuffix("_ms")
    ax.set_xlabel(f"{PRETTY.get(key, key)} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_title(f"CDF of per-request {PRETTY.get(key, key)} at {rate:g} req/s (seeds pooled)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, out)


def plot_sweep(lines: Sequence[dict], folder: str | Path, slos: dict | None = None) -> list[Path]:
    """The standard figures of a sweep; one set per workload when there are several."""
    folder = Path(folder)
    ok = [ln for ln in lines if ln.get("status") == "ok"]
    if not ok:
        return []
    by_workload: dict[str, list[dict]] = defaultdict(list)
    for ln in ok:
        by_workload[str(ln["labels"]["workload"])].append(ln)
    written = []
    for wl, group in sorted(by_workload.items()):
        tag = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in wl)
        written.append(plot_latency_grid(group, folder / f"latency_vs_rate_{tag}.png", title=f"workload {wl}"))
        for metric in ("ttft_ms", "e2el_ms"):
            written.append(plot_cdf(group, folder / f"cdf_{metric.removesuffix('_ms')}_{tag}.png", metric))
        if any("slo_attainment" in ln["metrics"] for ln in group):
            slo_text = ", ".join(f"{k} <= {v:g}" for k, v in (slos or {}).items())
            written.append(plot_metric(group, folder / f"slo_attainment_{tag}.png", "rate", "slo_attainment",
                                       title=f"SLO attainment ({slo_text}) - {wl}"))
    return written


# -- command line ------------------------------------------------------------------------------

def add_parser(sub) -> None:
    p = sub.add_parser("plot", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="results JSONL written by `microserving sweep`")
    p.add_argument("--x", default="rate", help="label or metric for the x axis (default: rate)")
    p.add_argument("--y", default="p99_e2el_ms", help="metric for the y axis (default: p99_e2el_ms)")
    p.add_argument("--kind", choices=["metric", "grid", "cdf", "all"], default="metric",
                   help="metric: --y vs --x; grid: mean/p99 TTFT/TPOT/E2E; cdf: per-request CDF; all: every figure")
    p.add_argument("--rate", type=float, help="rate for --kind cdf (default: the highest)")
    p.add_argument("--where", action="append", default=[], metavar="LABEL=VALUE",
                   help="keep only results whose label matches, e.g. --where workload=chat (repeatable)")
    p.add_argument("--logy", action="store_true", default=None,
                   help="log-scale y axis (default: when the values span two decades)")
    p.add_argument("-o", "--out", type=Path, default=None, help="figure path (a folder for --kind all)")


def run(args: argparse.Namespace) -> int:
    from experiments.sweep import read_results

    if not args.results.is_file():
        print(f"error: {args.results}: no such results file (write one with `microserving sweep`)", file=sys.stderr)
        return 2
    lines = read_results(args.results)
    for cond in args.where:
        key, sep, want = cond.partition("=")
        if not sep:
            print(f"error: --where {cond!r}: expected LABEL=VALUE", file=sys.stderr)
            return 2
        lines = [ln for ln in lines if str(ln.get("labels", {}).get(key)) == want]
    ok = [ln for ln in lines if ln.get("status") == "ok"]
    if not ok:
        print(f"error: no successful runs in {args.results}"
              + (f" (of {len(lines)} results)" if lines else " (no result lines in it)"), file=sys.stderr)
        return 2
    known = sorted({k for ln in ok for k in ln.get("labels", {})} | {k for ln in ok for k in ln["metrics"]})
    for flag, name in (("--x", args.x), ("--y", args.y)):
        if name not in known and args.kind in ("metric", "grid") and (flag == "--x" or args.kind == "metric"):
            print(f"error: {flag} {name!r}: not a label or metric of these results; known: {', '.join(known)}",
                  file=sys.stderr)
            return 2
    stem = args.results.with_suffix("")
    if args.kind == "all":
        paths = plot_sweep(lines, args.out or Path(f"{stem}_plots"))
    elif args.kind == "grid":
        paths = [plot_latency_grid(lines, args.out or Path(f"{stem}_grid.png"), x=args.x, logy=args.logy)]
    elif args.kind == "cdf":
        metric = args.y.split("_", 1)[1] if args.y.startswith(("mean_", "p99_", "median_")) else args.y
        paths = [plot_cdf(lines, args.out or Path(f"{stem}_cdf.png"), metric, args.rate)]
    else:
        paths = [plot_metric(lines, args.out or Path(f"{stem}_{args.y}.png"), args.x, args.y, logy=args.logy)]
    for p in paths:
        print(f"wrote {p}")
    return 0
