"""Simulator speed: simulated requests per wall second, SimPy events per second, peak memory.

    .venv/bin/python benchmarks/sim_speed.py            # 1k, 10k, 100k requests
    .venv/bin/python benchmarks/sim_speed.py --sizes 1000 10000

Cluster: 4 engines (Llama-3.1-8B on H100, roofline cost model) as 2P2D disaggregation.
Workload: chat-like Poisson arrivals (lognormal prompts ~1k tokens, outputs ~256), at a rate
that keeps the cluster busy but stable, so the number of engine steps grows with the requests.
Workload generation is timed apart from the simulation. Peak memory is the process's max RSS.
"""
from __future__ import annotations

import argparse
import resource
import time

from core_api.workload import WorkloadSpec, generate
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


def run_once(n: int, rate: float) -> dict:
    t0 = time.perf_counter()
    workload = generate(workload_spec(n, rate))
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
    result = cluster.run(workload)
    t_sim = time.perf_counter() - t1
    cluster.check_no_leaks()
    ok = sum(r.status == "ok" for r in result.records)
    steps = sum(s["steps"] for s in result.engine_stats.values())
    return {"requests": n, "ok": ok, "gen_s": t_gen, "sim_s": t_sim, "req_per_s": n / t_sim,
            "events": events, "events_per_s": events / t_sim, "steps": steps,
            "simulated_s": result.sim_time_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    parser.add_argument("--rate", type=float, default=12.0, help="request rate (req/s)")
    args = parser.parse_args()
    header = f"{'requests':>9} {'ok':>7} {'gen s':>7} {'sim s':>7} {'req/s':>8} {'events':>9} {'events/s':>9} {'steps':>8} {'us/step':>8} {'simulated s':>11}"
    print(header)
    for n in args.sizes:
        r = run_once(n, args.rate)
        print(f"{r['requests']:>9} {r['ok']:>7} {r['gen_s']:>7.2f} {r['sim_s']:>7.2f} {r['req_per_s']:>8.0f} "
              f"{r['events']:>9} {r['events_per_s']:>9.0f} {r['steps']:>8} {1e6 * r['sim_s'] / r['steps']:>8.1f} "
              f"{r['simulated_s']:>11.1f}", flush=True)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB")


if __name__ == "__main__":
    main()
