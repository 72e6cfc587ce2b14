"""Compare every built-in strategy on two default workloads on one simulated cluster.

    python -m experiments.compare_strategies [--num-requests N] [--seed S] [--out-dir results]

Cluster: 4 engines, Llama-3.1-8B on one H100 each, roofline cost model, NVLink between engines.
Workloads: `chat` (prompts ~1k tokens, 60% start with one of 8 system prompts, outputs ~256
tokens, 30 req/s) and `long_prompt` (prompts ~8k tokens, outputs ~128 tokens, 6 req/s). Prints a
table of mean and p99 TTFT, TPOT and E2E latency per strategy and workload, and writes it as JSON
and CSV under the output folder (the paths are printed).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

from core_api.workload import WorkloadSpec, generate
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig

CLUSTER = {"engines": [EngineConfig(count=4, gpu="H100-SXM", model="Llama-3.1-8B")]}

WORKLOADS = {
    "chat": {
        "arrival": {"process": "poisson", "rate": 30.0},
        "prompt_len": {"kind": "lognormal", "mean": 1024, "sigma": 0.8, "max": 8192},
        "output_len": {"kind": "lognormal", "mean": 256, "sigma": 0.6, "max": 1024},
        "prefix": {"num_groups": 8, "prefix_len": 512, "fraction": 0.6, "choice": "zipf"},
    },
    "long_prompt": {
        "arrival": {"process": "poisson", "rate": 6.0},
        "prompt_len": {"kind": "lognormal", "mean": 8192, "sigma": 0.4, "max": 24000},
        "output_len": {"kind": "lognormal", "mean": 128, "sigma": 0.5, "max": 512},
    },
}

# (label, registered name, params): every built-in strategy, PD in two role splits, balanced PD at two ratios.
VARIANTS = [
    ("round_robin", "round_robin", {}),
    ("least_loaded", "least_loaded", {}),
    ("vllm_dp", "vllm_dp", {}),
    ("prefix_aware", "prefix_aware", {}),
    ("prefix_migration", "prefix_migration", {}),
    ("pd 2P2D", "pd", {}),
    ("pd 1P3D", "pd", {"prefill": ["e0"], "decode": ["e1", "e2", "e3"]}),
    ("pd_prefix_aware", "pd_prefix_aware", {}),
    ("balanced_pd r=0.2", "balanced_pd", {"ratio": 0.2}),
    ("balanced_pd r=0.4", "balanced_pd", {"ratio": 0.4}),
    ("adaptive", "adaptive", {}),
]

COLUMNS = [("ttft", "mean"), ("ttft", "p99"), ("tpot", "mean"), ("tpot", "p99"), ("e2el", "mean"), ("e2el", "p99")]


def run_one(workload, name: str, params: dict) -> dict:
    cluster = SimCluster(ClusterConfig(**CLUSTER, strategy=StrategyConfig(name=name, params=params)))
    result = cluster.run(workload)
    cluster.check_no_leaks()
    m = result.metrics()
    row = {f"{stat}_{lat}_ms": m[f"{stat}_{lat}_ms"] for lat, stat in COLUMNS}
    row.update(completed=m["completed"], failed=m.get("failed", 0), sim_time_s=result.sim_time_s)
    return row


def format_rows(rows: list[dict]) -> str:
    head = f"{'workload':<12} {'strategy':<18} {'ok':>4} " + " ".join(
        f"{stat + ' ' + lat.upper().replace('E2EL', 'E2E'):>10}" for lat, stat in COLUMNS)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['workload']:<12} {r['strategy']:<18} {r['completed']:>4} " + " ".join(
            f"{r[f'{stat}_{lat}_ms']:>10.1f}" for lat, stat in COLUMNS))
    return "\n".join(lines) + "\n(latencies in ms)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--num-requests", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=Path("results"))
    args = ap.parse_args(argv)
    rows, t0 = [], time.perf_counter()
    for wname, spec in WORKLOADS.items():
        workload = generate(WorkloadSpec(name=wname, num_requests=args.num_requests, seed=args.seed, **spec))
        for label, name, params in VARIANTS:
            rows.append({"workload": wname, "strategy": label, "name": name, "params": params,
                         **run_one(workload, name, params)})
            print(f"  {wname:<12} {label:<18} done", file=sys.stderr)
    print(format_rows(rows))
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"compare_strategies_n{args.num_requests}_s{args.seed}"
    meta = {"cluster": "4x H100-SXM, Llama-3.1-8B, roofline", "workloads": WORKLOADS,
            "num_requests": args.num_requests, "seed": args.seed}
    stem.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1, default=str))
    with stem.with_suffix(".csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[k for k in rows[0] if k != "params"], extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    print(f"wrote {stem}.json and {stem}.csv ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
