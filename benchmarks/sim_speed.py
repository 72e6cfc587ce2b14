"""Simulator speed: simulated requests per wall second, SimPy events per second, peak memory.

    .venv/bin/python benchmarks/sim_speed.py                      # 1k, 10k, 100k requests
    .venv/bin/python benchmarks/sim_speed.py --sizes 1000 10000
    .venv/bin/python benchmarks/sim_speed.py --sizes 1000000      # a million (about 7 min here)
    .venv/bin/python benchmarks/sim_speed.py --sizes 10000 --repeats 5   # the median of 5

Cluster: 4 engines (Llama-3.1-8B on H100, roofline cost model) as 2P2D disaggregation.
Workload: chat-like Poisson arrivals (lognormal prompts ~1k tokens, outputs ~256), at a rate
that keeps the cluster busy but stable, so the number of engine steps grows with the requests.

Each size runs in a fresh process, so its peak RSS is its own. Requests are built lazily as
they arrive (core_api.request_stream) and records keep each request's first and last token
time, not every token's (`token_times: false`; ITL from a histogram within 0.1%), which is
what lets a million requests fit in memory; `--token-times` keeps them all. "run s" is the
simulation including building the requests as they arrive; "gen s" is building them alone.
With `--repeats N` each size runs N times, each in a fresh process, and the row shows the run with
the median "run s" and the range over the N (this machine's speed moves between runs).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

from core_api.workload import WorkloadSpec, generate
from experiments.arg_types import positive_float
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig


def cluster_config() -> ClusterConfig:
    return ClusterConfig(engines=[EngineConfig(count=4)], strategy=StrategyConfig(name="pd"))


def workload_spec(n: int, rate: float) -> WorkloadSpec:
    return WorkloadSpec(
        num_requests=n,
        arrival={"process": "poisson", "rate": rate},
        prompt_len={"kind": "lognormal", "mean": 1024, "sigma": 0.8, "max": 8192},
        output_len={"kind": "lognormal", "mean": 256, "sigma": 0.6, "max": 2048},
        seed=1,
    )


def run_once(n: int, rate: float, token_times: bool = False) -> dict:
    spec = workload_spec(n, rate)
    t0 = time.perf_counter()
    for _ in generate(spec, lazy=True):
        pass
    t_gen = time.perf_counter() - t0
    cluster = SimCluster(cluster_config())
    events = 0
    schedule = cluster.env.schedule

    def counting_schedule(event, priority=1, delay=0):
        nonlocal events
        events += 1
        schedule(event, priority, delay)

    cluster.env.schedule = counting_schedule
    t1 = time.perf_counter()
    result = cluster.run(generate(spec, lazy=True), token_times=token_times)
    t_sim = time.perf_counter() - t1
    cluster.check_no_leaks()
    ok = sum(r.status == "ok" for r in result.records)
    steps = sum(s["steps"] for s in result.engine_stats.values())
    metrics = result.metrics()
    return {"requests": n, "ok": ok, "gen_s": t_gen, "sim_s": t_sim, "req_per_s": n / t_sim,
            "events": events, "events_per_s": events / t_sim, "steps": steps, "simulated_s": result.sim_time_s,
            "mean_ttft_ms": metrics["mean_ttft_ms"], "p99_itl_ms": metrics["p99_itl_ms"],
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--rate", type=positive_float, default=12.0, help="request rate (req/s)")
    parser.add_argument("--token-times", action="store_true", help="keep every token's time in the records")
    parser.add_argument("--repeats", type=int, default=1, help="runs per size, each in a fresh process (median shown)")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # a child process: one size, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_once(args.one, args.rate, args.token_times)))
        return
    if args.repeats < 1 or any(n < 1 for n in args.sizes):
        parser.error("--sizes and --repeats must be at least 1")
    print(f"{'requests':>9} {'ok':>9} {'gen s':>7} {'run s':>8} {'req/s':>7} {'ms/req':>7} {'events':>10} "
          f"{'events/s':>9} {'steps':>10} {'us/step':>8} {'peak RSS MiB':>13}"
          + (f" {'run s range':>13}" if args.repeats > 1 else ""), flush=True)
    for n in args.sizes:
        child = [sys.executable, __file__, "--one", str(n), "--rate", str(args.rate)]
        runs = []
        for _ in range(args.repeats):
            out = subprocess.run(child + (["--token-times"] if args.token_times else []), capture_output=True,
                                 text=True, check=True)
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        runs.sort(key=lambda r: r["sim_s"])
        r = runs[(len(runs) - 1) // 2]  # the median run (the lower one of an even count)
        spread = f" {runs[0]['sim_s']:>6.2f}-{runs[-1]['sim_s']:<6.2f}" if args.repeats > 1 else ""
        print(f"{r['requests']:>9} {r['ok']:>9} {r['gen_s']:>7.2f} {r['sim_s']:>8.2f} {r['req_per_s']:>7.0f} "
              f"{1e3 * r['sim_s'] / n:>7.3f} {r['events']:>10} {r['events_per_s']:>9.0f} {r['steps']:>10} "
              f"{1e6 * r['sim_s'] / r['steps']:>8.1f} {r['peak_rss_mib']:>13.0f}{spread}", flush=True)


if __name__ == "__main__":
    main()
