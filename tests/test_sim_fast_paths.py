"""The simulator's fast paths change nothing it reports: decode runs applied in one go (priced
in one call when the cost model can) give byte-identical results to stepping every step and
pricing each, on configurations that exercise what could make them differ: PD and balanced PD
transfers, prefix-cache hits, preemption under memory pressure, context migration, reservations
admitted and pages taken while a run is in progress, faults that start inside a run (stalls,
slow-downs, a crash and restart, a held link), calls read only between steps."""
from __future__ import annotations

import pytest

from core_api.workload import generate
from sim.cluster import SimCluster
from sim.config import SimConfig
from sim.cost_model import FittedCostModel, RooflineCostModel

WORKLOAD = {"num_requests": 120, "arrival": {"rate": 25},
            "prompt_len": {"kind": "lognormal", "mean": 800, "sigma": 0.8, "max": 6000},
            "output_len": {"kind": "uniform", "low": 1, "high": 300},
            "prefix": {"num_groups": 4, "prefix_len": 512, "fraction": 0.5}}

CONFIGS = {
    "pd": {"engines": [{"count": 3}], "strategy": {"name": "pd", "params": {"prefill": ["e0"], "decode": ["e1", "e2"]}}},
    "balanced_pd": {"engines": [{"count": 2}], "strategy": {"name": "balanced_pd", "params": {"ratio": 0.3}}},
    "prefix_caching": {"engines": [{"count": 2}], "strategy": {"name": "prefix_aware"}},
    "preemption": {"engines": [{"count": 2, "num_pages": 700}], "strategy": {"name": "round_robin"}},
    "migration": {"engines": [{"count": 3}], "strategy": {"name": "prefix_migration"}},
    "pages_taken_mid_run": {"engines": [{"count": 4, "num_pages": 800}], "strategy": {"name": "pd_prefix_aware"}},
    "fitted_cost_model": {"engines": [{"count": 2, "num_pages": 900}], "strategy": {"name": "pd"}},
    "faults": {"engines": [{"count": 3}], "strategy": {"name": "pd", "params": {"prefill": ["e0"], "decode": ["e1", "e2"],
                                                                               "failover": True}}},
    "data_parallel": {"engines": [{"count": 2}], "strategy": {"name": "round_robin"}},
    # A call read between steps reaches the loop exactly as a step ends, after the next has begun.
    "calls_between_steps": {"engines": [{"count": 3}], "strategy": {"name": "pd"}, "calls_between_steps": True},
}
# Stalls and slow-downs that start inside decode runs, a crash in the middle of one and its
# restart, a link held: the runs are cut, stretched, re-priced or dropped as stepping would.
FAULTS = {"faults": [{"at": 0.7, "kind": "stall", "engine": "e1", "duration": 0.05},
                     {"at": 1.1, "kind": "slow", "engine": "e2", "duration": 0.8, "factor": 1.7},
                     {"at": 1.9, "kind": "stall", "engine": "e2", "duration": 0.02},
                     {"at": 2.6, "kind": "partition", "engine": "e0", "peer": "e1", "duration": 0.2},
                     {"at": 3.1, "kind": "crash", "engine": "e1"},
                     {"at": 3.6, "kind": "restart", "engine": "e1"}]}


class StepPriced:
    """A cost model without the one-call decode pricing: the simulator prices each step."""

    def __init__(self, model) -> None:
        self.step_time, self.describe = model.step_time, model.describe


def _run(name: str, fast: bool, priced_runs: bool = True, seed: int = 5):
    config = SimConfig.model_validate({"cluster": CONFIGS[name], "workload": WORKLOAD, "seed": seed,
                                       **({"faults": FAULTS} if name == "faults" else {})})
    cluster = SimCluster(config.cluster)
    for engine in cluster.engines.values():
        if name == "fitted_cost_model":  # a linear step model with every decode coefficient set
            engine.cost_model = FittedCostModel({"const": 4e-3, "prefill_tokens": 5e-5, "decode_seqs": 2e-5,
                                                 "decode_context": 3e-8, "sampled": 1e-5, "prefill_attn": 1e-9})
        engine.fast_forward = fast
        if not priced_runs:
            engine.cost_model = StepPriced(engine.cost_model)
    result = cluster.run(generate(config.workload), seed=config.seed, faults=config.faults)
    cluster.check_no_leaks()
    return result


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fast_paths_give_byte_identical_results(name):
    fast, stepped = _run(name, fast=True), _run(name, fast=False, priced_runs=False)
    fast_step_priced = _run(name, fast=True, priced_runs=False)
    assert fast.to_json() == stepped.to_json() == fast_step_priced.to_json()
    assert all(r.status == "ok" for r in fast.records) or name == "faults"
    steps = sum(s["steps"] for s in fast.engine_stats.values())
    assert steps > len(fast.records)  # decode steps did happen (and were fast-forwarded)
    if name == "preemption":
        assert sum(s["preemptions"] for s in fast.engine_stats.values()) > 0


def test_a_decode_run_priced_in_one_call_equals_its_steps_bit_for_bit():
    from core_api.step import StepFeatures
    from sim.profile import TokenCurve

    for model in (RooflineCostModel("H100-SXM", "Llama-3.1-8B", tp=2),
                  FittedCostModel({"const": 1e-3, "decode_seqs": 1e-5, "decode_context": 2e-8, "sampled": 3e-6}),
                  FittedCostModel({"decode_seqs": 1e-5, "decode_context": 2e-8, "sampled": 3e-6},
                                  token_curve=TokenCurve(tokens=[1, 16, 64], seconds=[1e-3, 1.3e-3, 2.9e-3]))):
        f = StepFeatures(decode_seqs=37, decode_context=37 * 900, decode_max_context=1500, sampled=37)
        priced = model.decode_step_times(f, 500).tolist()
        stepped = []
        for i in range(500):
            stepped.append(model.step_time(StepFeatures(decode_seqs=37, decode_context=37 * 900 + 37 * i,
                                                        decode_max_context=1500 + i, sampled=37)))
        assert priced == stepped


@pytest.mark.parametrize("name", ["pd", "balanced_pd"])
def test_without_shared_prefixes_turning_the_prefix_cache_off_changes_no_time(name):
    """With caching off nothing is keyed or kept for reuse (the faster path for workloads with no
    shared prefix); pages a cache would keep are free instead, which an allocation takes just the
    same, so where no prefix is ever hit every time is the same. (A preempted sequence hits its own
    cached pages when it comes back: with preemption the two differ, as they should.)"""
    def run(caching: bool):
        engines = [{**e, "policy": {"prefix_caching": caching}} for e in CONFIGS[name]["engines"]]
        workload = {k: v for k, v in WORKLOAD.items() if k != "prefix"}
        config = SimConfig.model_validate({"cluster": {**CONFIGS[name], "engines": engines}, "workload": workload})
        cluster = SimCluster(config.cluster)
        result = cluster.run(generate(config.workload), seed=config.seed)
        cluster.check_no_leaks()
        return result

    cached, uncached = run(True), run(False)
    assert sum(s["prefix_hit_tokens"] for s in cached.engine_stats.values()) == 0
    assert [r.token_times for r in cached.records] == [r.token_times for r in uncached.records]
    assert cached.metrics() == uncached.metrics()


def _fast_and_stepped(config: SimConfig, seed: int) -> tuple[str, str]:
    """The run's result JSON with decode runs, and with every step taken alone."""
    out = []
    for fast in (True, False):
        cluster = SimCluster(config.cluster)
        for engine in cluster.engines.values():
            engine.fast_forward = fast
        out.append(cluster.run(generate(config.workload), seed=seed, faults=config.faults).to_json())
        cluster.check_no_leaks()
    return out[0], out[1]


def _random_faults(rng, engines: list[str]) -> list[dict]:
    faults, crashed = [], set()
    for _ in range(rng.randint(1, 5)):
        kind, engine, at = rng.choice(["stall", "slow", "crash"]), rng.choice(engines), round(rng.uniform(0.2, 4.5), 4)
        if kind == "stall":
            faults.append({"at": at, "kind": "stall", "engine": engine, "duration": round(rng.uniform(0.001, 0.08), 4)})
        elif kind == "slow":
            faults.append({"at": at, "kind": "slow", "engine": engine, "duration": round(rng.uniform(0.05, 1.0), 3),
                           "factor": round(rng.uniform(1.1, 3.0), 2)})
        elif engine not in crashed:
            crashed.add(engine)
            faults += [{"at": at, "kind": "crash", "engine": engine},
                       {"at": round(at + rng.uniform(0.05, 1.0), 4), "kind": "restart", "engine": engine}]
    return faults


@pytest.mark.slow
def test_fast_paths_match_stepping_under_random_faults():
    """Stalls, slow-downs and crashes with restarts at random times, on four strategies: a crash
    in the middle of a decode run once left the crashed engine's step count short of stepping's and
    a restarted engine resuming late (41 of 92 such schedules differed, 2 in their records)."""
    import random

    from pydantic import ValidationError

    checked = 0
    for i in range(40):
        rng = random.Random(i)
        name = rng.choice(["faults", "data_parallel", "balanced_pd", "pd"])
        engines = [f"e{j}" for j in range(CONFIGS[name]["engines"][0]["count"])]
        faults = _random_faults(rng, engines)
        try:
            config = SimConfig.model_validate({"cluster": CONFIGS[name], "workload": WORKLOAD, "seed": i,
                                               "faults": {"faults": faults}})
        except ValidationError:
            continue  # e.g. a fault on an engine that is down then
        fast, stepped = _fast_and_stepped(config, i)
        assert fast == stepped, (name, faults)
        checked += 1
    assert checked >= 30


def _random_configuration(rng) -> tuple[dict, dict]:
    """A cluster and a workload drawn across what changes when a run may be taken: strategy,
    memory pressure, token and sequence budgets, reservation timeouts, admission policy, prefix
    sharing, arrival rate and lengths."""
    engine = {"count": rng.randint(2, 4), "max_num_batched_tokens": rng.choice([256, 512, 2048, 8192]),
              "max_num_seqs": rng.choice([4, 16, 64, 256]), "reservation_timeout_s": rng.choice([30.0, 0.05, 0.3]),
              "policy": {"watermark": rng.choice([0.0, 0.01, 0.05]), "admit_whole_sequence": rng.random() < 0.3,
                         "admit_after_preemption": rng.random() < 0.7, "prefix_caching": rng.random() < 0.8}}
    pages = rng.choice([None, 300, 600, 1500])
    if pages is not None:
        engine["num_pages"] = pages
    strategy = rng.choice(["adaptive", "balanced_pd", "least_loaded", "pd", "pd_prefix_aware", "prefix_aware",
                           "prefix_migration", "round_robin"])
    workload = {"num_requests": rng.randint(40, 120), "arrival": {"rate": rng.choice([5, 20, 60, float("inf")])},
                "prompt_len": {"kind": "lognormal", "mean": rng.choice([100, 400, 1500]), "sigma": 0.8, "max": 4000},
                "output_len": {"kind": "uniform", "low": 1, "high": rng.choice([8, 64, 300])}}
    if rng.random() < 0.6:
        workload["prefix"] = {"num_groups": rng.randint(1, 6), "prefix_len": rng.choice([64, 256, 512]),
                              "fraction": rng.choice([0.3, 0.7, 1.0])}
    return {"engines": [engine], "strategy": {"name": strategy}}, workload


@pytest.mark.slow
def test_fast_paths_match_stepping_on_random_configurations():
    import random

    for i in range(24):
        cluster_config, workload = _random_configuration(random.Random(1000 + i))
        config = SimConfig.model_validate({"cluster": cluster_config, "workload": workload, "seed": i})
        fast, stepped = _fast_and_stepped(config, i)
        assert fast == stepped, (cluster_config, workload)
