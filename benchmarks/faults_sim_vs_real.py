"""The same fault schedules on the simulator and on real tiny engines, side by side.

    python benchmarks/faults_sim_vs_real.py [--profile calibration/profiles/cpu-tiny-colocated.json] [--json OUT]

Three engines of the tiny model (real: processes on this machine; sim: the same limits, priced
by a fitted CPU profile with its measured host effects), 60 requests of 150 output tokens at 20 req/s. Per scenario
and backend: requests ok, failed by error class, how many of those arrived after the fault
(new work that was not served), the longest time from the fault to a failure (how fast the
affected fail), and the time to recover (the first request arriving after the fault completes).
The real engines are checked for leaked pages after every run (survivors only).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from core_api.faults import FaultSchedule, failures_by_kind, recovery
from core_api.types import Request, SamplingParams
from core_api.workload import Workload

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PROFILE = ROOT / "calibration" / "profiles" / "cpu-tiny-colocated.json"
ENGINE = {"num_pages": 512, "page_size": 16, "max_num_batched_tokens": 256, "max_num_seqs": 64}
PD = {"prefill": ["e0"], "decode": ["e1", "e2"]}
HEARTBEAT_S = 1.0
SCENARIOS = [  # name, strategy, params, faults, fault time
    ("crash mid-decode", "round_robin", {}, [{"at": 1.0, "kind": "crash", "engine": "e1"}]),
    ("crash of a decode engine mid-transfer (PD)", "pd", PD, [{"at": 1.0, "kind": "crash", "engine": "e1"}]),
    ("crash of the only prefill engine (PD)", "pd", PD, [{"at": 1.0, "kind": "crash", "engine": "e0"}]),
    ("stall 0.5 s < heartbeat 1 s", "round_robin", {}, [{"at": 1.0, "kind": "stall", "engine": "e1", "duration": 0.5}]),
    ("stall 2 s > heartbeat 1 s", "round_robin", {}, [{"at": 1.0, "kind": "stall", "engine": "e1", "duration": 2.0}]),
    ("crash, restart 1 s later", "round_robin", {}, [{"at": 1.0, "kind": "crash", "engine": "e1"},
                                                      {"at": 2.0, "kind": "restart", "engine": "e1"}]),
    ("partition of the KV path e0 -> e1 for 1 s (PD)", "pd", PD,
     [{"at": 1.0, "kind": "partition", "engine": "e0", "peer": "e1", "duration": 1.0}]),
]


def workload(seed: int = 0) -> list[Request]:
    rng = np.random.default_rng(seed)
    return [Request(f"q{i}", rng.integers(0, 256, int(rng.integers(40, 120)), dtype=np.int32),
                    SamplingParams(max_tokens=150, ignore_eos=True), arrival_time=i / 20.0) for i in range(60)]


def summary(records, fault_at: float) -> dict:
    failed = [r for r in records if r.status != "ok"]
    ttft = [r.token_times[0] - r.arrival_time for r in records if r.status == "ok"]
    return {"ok": len(records) - len(failed), "failed": failures_by_kind(records),
            "max_ttft_s": round(max(ttft), 3) if ttft else None,
            "failed_after_fault": sum(r.arrival_time >= fault_at for r in failed),
            "slowest_failure_s": round(max((r.finish_time - fault_at for r in failed), default=0.0), 3),
            "recovery_s": None if (rec := recovery(records, fault_at)) is None else round(rec, 3)}


def run_sim(profile_path: Path, strategy: str, params: dict, faults: list[dict]) -> dict:
    from real.config import EngineSpec
    from sim.cluster import SimCluster
    from sim.config import ClusterConfig, EngineConfig, StrategyConfig
    from sim.measured_host import host_effects, profile_link
    from sim.profile import CostProfile

    profile = CostProfile.load(profile_path)
    engine = EngineConfig(count=3, model="tiny-llama", max_model_len=4096, **ENGINE)
    cluster = SimCluster(ClusterConfig(
        engines=[engine], link=profile_link(profile, engine), strategy=StrategyConfig(name=strategy, params=params),
        cost_model=str(profile_path), heartbeat_timeout_s=HEARTBEAT_S,
        **host_effects(profile, EngineSpec(**ENGINE).stream_interval_s)))
    result = cluster.run(Workload(workload()), faults=FaultSchedule(faults=faults))
    cluster.check_no_leaks()
    return summary(result.records, faults[0]["at"])


def run_real(strategy: str, params: dict, faults: list[dict]) -> dict:
    from real.cluster import RealCluster, check_no_leaks
    from real.config import RealClusterConfig
    from real.faults import run_with_faults

    config = RealClusterConfig(engines=[{"count": 3, "model": "tiny", **ENGINE}], heartbeat_timeout_s=HEARTBEAT_S,
                               heartbeat_s=0.2)
    settle = 0.0 if faults[-1]["kind"] == "crash" else 5.0  # a woken engine rejoins within a heartbeat or two

    async def go(cluster):
        async with cluster.session() as conns:
            result = await run_with_faults(cluster, dict(conns), Workload(workload()), strategy, params,
                                           FaultSchedule(faults=faults), settle)
            await check_no_leaks([e for e in conns.values() if e.healthy])
            return result

    with RealCluster(config) as cluster:
        result = asyncio.run(go(cluster))
    return summary(result.records, faults[0]["at"])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=DEFAULT_PROFILE)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    rows = []
    for name, strategy, params, faults in SCENARIOS:
        sim = run_sim(args.profile, strategy, params, faults)
        real = run_real(strategy, params, faults)
        rows.append({"scenario": name, "sim": sim, "real": real})
        print(f"{name}\n  sim : {sim}\n  real: {real}", flush=True)
    print("\n| scenario | ok sim / real | failed sim / real | failed after the fault | slowest failure (s) | recovery (s) "
          "| max TTFT (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        s, q = r["sim"], r["real"]
        print(f"| {r['scenario']} | {s['ok']} / {q['ok']} | {s['failed'] or 0} / {q['failed'] or 0} | "
              f"{s['failed_after_fault']} / {q['failed_after_fault']} | {s['slowest_failure_s']} / {q['slowest_failure_s']} "
              f"| {s['recovery_s']} / {q['recovery_s']} | {s['max_ttft_s']} / {q['max_ttft_s']} |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
