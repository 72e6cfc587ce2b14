"""The simulated cluster end to end: determinism, no leaks, analytic timings, bad input."""
import json
import subprocess
import sys

import pytest
from pydantic import ValidationError

from core_api.step import StepFeatures
from core_api.strategy import StrategyError
from core_api.workload import WorkloadSpec, generate
from sim.cluster import SimCluster, simulate
from sim.config import SimConfig, load_config
from sim.cost_model import RooflineCostModel
from tests.helpers import make_request, small_cluster, workload_of


def small_sim_config(strategy="pd", n=40, rate=20.0, seed=3) -> SimConfig:
    return SimConfig(
        cluster=small_cluster(2, strategy, num_pages=4096),
        workload=WorkloadSpec(num_requests=n, arrival={"rate": rate},
                              prompt_len={"kind": "uniform", "low": 16, "high": 600},
                              output_len={"kind": "uniform", "low": 1, "high": 40},
                              prefix={"num_groups": 2, "prefix_len": 64, "fraction": 0.5}),
        seed=seed,
    )


def test_same_config_and_seed_give_byte_identical_results():
    a = simulate(small_sim_config()).to_json()
    b = simulate(small_sim_config()).to_json()
    c = simulate(small_sim_config(seed=4)).to_json()
    assert a == b
    assert a != c


@pytest.mark.parametrize("strategy", ["round_robin", "least_loaded", "pd"])
def test_every_request_completes_and_no_page_leaks(strategy):
    config = small_sim_config(strategy, n=80, rate=50.0)
    cluster = SimCluster(config.cluster)
    result = cluster.run(generate(config.workload))
    assert [r.status for r in result.records] == ["ok"] * 80
    assert all(r.output_len == r.max_tokens for r in result.records)
    cluster.check_no_leaks()
    for stats in result.engine_stats.values():
        assert stats["pages"]["used"] == 0 and stats["pages"]["reserved"] == 0


def test_memory_pressure_preempts_but_completes_without_leaks():
    config = small_sim_config("pd", n=60, rate=1000.0)
    config.cluster.engines[0].num_pages = 160
    config.workload = WorkloadSpec.model_validate({**config.workload.model_dump(), "output_len": {"kind": "fixed", "value": 300}})
    cluster = SimCluster(config.cluster)
    result = cluster.run(generate(config.workload))
    assert all(r.status == "ok" for r in result.records)
    assert sum(s["preemptions"] for s in result.engine_stats.values()) > 0
    cluster.check_no_leaks()


def test_one_request_on_an_idle_engine_matches_the_cost_model_exactly():
    prompt_len, max_tokens = 300, 5
    cluster = SimCluster(small_cluster(1, "round_robin"))
    result = cluster.run(workload_of([make_request("r", prompt_len, max_tokens)]))
    [record] = result.records
    cost = RooflineCostModel("H100-SXM", "Llama-3.1-8B", 1)
    prefill = cost.step_time(StepFeatures(prefill_tokens=prompt_len, prefill_seqs=1,
                                          prefill_attn=prompt_len * prompt_len / 2, sampled=1))
    assert record.first_token_time - record.arrival_time == prefill
    times = record.token_times
    for i in range(1, max_tokens):
        decode = cost.step_time(StepFeatures(decode_seqs=1, decode_context=prompt_len + i, sampled=1))
        assert times[i] - times[i - 1] == pytest.approx(decode, rel=1e-12)


def test_pd_ttft_is_prefill_plus_transfer_plus_one_token_step():
    prompt_len = 256
    config = small_cluster(2, "pd")
    cluster = SimCluster(config)
    result = cluster.run(workload_of([make_request("r", prompt_len, 2)]))
    [record] = result.records
    cost = RooflineCostModel("H100-SXM", "Llama-3.1-8B", 1)
    n = prompt_len - 1
    prefill = cost.step_time(StepFeatures(prefill_tokens=n, prefill_seqs=1, prefill_attn=n * n / 2))
    last = cost.step_time(StepFeatures(prefill_tokens=1, prefill_seqs=1, prefill_attn=n + 0.5, sampled=1))
    link = cluster.network.spec("e0", "e1")
    kv_bytes = n * 2 * 32 * 8 * 128 * 2  # tokens x (K,V) x layers x kv heads x head dim x bf16
    assert record.first_token_time == pytest.approx(prefill + link.uncontended_time(kv_bytes) + last, rel=1e-12)


def test_a_request_too_long_fails_with_a_reason_and_the_rest_complete():
    cluster = SimCluster(small_cluster(2, "pd", max_model_len=1000))
    requests = [make_request(f"r{i}", 100, 4, arrival=i * 0.01, seed=i) for i in range(5)]
    requests.append(make_request("huge", 1200, 4, arrival=0.02, seed=99))
    result = cluster.run(workload_of(requests))
    by_id = {r.request_id: r for r in result.records}
    assert by_id["huge"].status == "failed" and "max context of 1000" in by_id["huge"].reason
    assert all(by_id[f"r{i}"].status == "ok" for i in range(5))
    cluster.check_no_leaks()


def test_a_request_larger_than_all_kv_pages_fails_cleanly():
    cluster = SimCluster(small_cluster(1, "round_robin", num_pages=10, page_size=16))
    result = cluster.run(workload_of([make_request("big", 200, 4), make_request("ok", 20, 4, arrival=0.1)]))
    by_id = {r.request_id: r for r in result.records}
    assert by_id["big"].status == "failed" and "needs 13 KV pages" in by_id["big"].reason
    assert by_id["ok"].status == "ok"
    cluster.check_no_leaks()


def test_bad_workload_values_are_rejected_at_validation():
    with pytest.raises(ValidationError, match="num_requests"):
        WorkloadSpec(num_requests=0)
    with pytest.raises(ValueError, match="prompt is empty"):
        make_request("e", 0, prompt=__import__("numpy").zeros(0, "int32"))
    with pytest.raises(ValueError, match="max_tokens must be >= 1"):
        make_request("m", 4, max_tokens=0)


def test_unknown_strategy_lists_known_names():
    with pytest.raises(StrategyError, match="known: .*pd.*round_robin"):
        SimCluster(small_cluster(2, "no_such_strategy"))


def test_pd_on_one_engine_is_refused_before_any_request():
    with pytest.raises(StrategyError, match="at least 2 engines"):
        SimCluster(small_cluster(1, "pd"))


def test_malformed_config_file_names_the_bad_field(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("cluster:\n  engines:\n    - tp: zero\nworkload:\n  num_requests: 5\n")
    with pytest.raises(ValidationError, match=r"engines\.0\.tp"):
        load_config(path)
    path.write_text("cluster:\n  engines: [{}]\n  stratgy: {name: pd}\nworkload: {num_requests: 5}\n")
    with pytest.raises(ValidationError, match="stratgy"):
        load_config(path)


def test_core_api_and_sim_do_not_import_torch():
    code = ("import sys, core_api.scheduler, core_api.strategy, core_api.metrics, core_api.workload, "
            "sim.cluster, strategies; sys.exit(1 if 'torch' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_simulation_imports_only_what_it_needs(tmp_path):
    """A whole `sim` run from a JSON config loads neither asyncio (the real backend's runtime),
    numpy.ma (numpy's percentile and median import it), yaml nor the trace readers: startup
    time a sweep of subprocesses pays per run."""
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"cluster": {"engines": [{}], "strategy": {"name": "round_robin"}},
                                  "workload": {"num_requests": 20}}))
    code = ("import sys; from microserving.cli import main; main(['sim', '--config', sys.argv[1]]); "
            "print(sorted({'asyncio', 'numpy.ma', 'yaml', 'torch', 'scipy', 'matplotlib', 'core_api.traces'} "
            "& set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(config)], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"


def test_the_command_freezes_the_heap_only_as_it_exits(tmp_path, monkeypatch, capsys):
    """`microserving` (console_main) leaves its heap frozen for the interpreter's shutdown, so the
    final garbage collections skip it; main(), which tests and notebooks call, does not."""
    import gc

    from microserving.cli import console_main, main

    config = tmp_path / "c.json"
    config.write_text(json.dumps({"cluster": {"engines": [{}]}, "workload": {"num_requests": 5}}))
    assert main(["sim", "--config", str(config)]) == 0 and gc.get_freeze_count() == 0
    monkeypatch.setattr(sys, "argv", ["microserving", "sim", "--config", str(config)])
    try:
        assert console_main() == 0 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
    monkeypatch.setattr(sys, "argv", ["microserving", "sim", "--config", str(tmp_path / "missing.json")])
    try:
        assert console_main() == 2  # the command's own exit code
    finally:
        gc.unfreeze()


def test_cli_sim_runs_and_reports_errors(tmp_path, capsys):
    from microserving.cli import main

    out = tmp_path / "r.json"
    assert main(["sim", "--num-requests", "20", "--rate", "10", "--out", str(out)]) == 0
    assert "Successful requests:" in capsys.readouterr().out and out.stat().st_size > 0
    assert main(["sim", "--strategy", "nope", "--num-requests", "5"]) == 2
    assert "known:" in capsys.readouterr().err


def test_a_stalled_request_is_reported_failed_not_ok():
    from core_api.strategy import Strategy
    from sim.runtime import SimWait

    class Stuck(Strategy):
        name = "stuck"

        async def generate(self, req):
            await SimWait(self.runtime.env.event())  # never fires
            yield

    config = small_cluster(1)
    cluster = SimCluster(config)
    cluster.strategy = Stuck(list(cluster.engines.values()), cluster.runtime)
    [record] = cluster.run(workload_of([make_request("r", 10)])).records
    assert record.status == "failed" and record.reason.startswith("stalled")


@pytest.mark.parametrize("strategy", ["round_robin", "pd"])
def test_decode_fast_forward_matches_step_by_step(strategy):
    """Applying runs of decode steps at once must not change what the simulation reports."""
    config = small_sim_config(strategy, n=60, rate=30.0)
    runs = []
    for fast in (True, False):
        cluster = SimCluster(config.cluster)
        for engine in cluster.engines.values():
            engine.fast_forward = fast
        runs.append(cluster.run(generate(config.workload)))
        cluster.check_no_leaks()
    fast, slow = runs
    for a, b in zip(fast.records, slow.records):
        assert (a.request_id, a.status, a.output_len) == (b.request_id, b.status, b.output_len)
        assert a.token_times == b.token_times
    assert [s["steps"] for s in fast.engine_stats.values()] == [s["steps"] for s in slow.engine_stats.values()]


# A prep_recv admitted at once (or a send served from the cache) during a run of decode steps
# used to take the pages the run's later steps needed; applying the run then crashed in
# apply_decode_run ("'NoneType' object is not iterable"). This configuration did, with seed 56.
PAGES_TAKEN_MID_RUN = {
    "cluster": {"engines": [{"count": 4, "num_pages": 800}], "strategy": {"name": "pd_prefix_aware"}},
    "workload": {"num_requests": 100, "arrival": {"rate": 30}, "prompt_len": {"kind": "fixed", "value": 900},
                 "output_len": {"kind": "uniform", "low": 1, "high": 200},
                 "prefix": {"num_groups": 3, "prefix_len": 512, "fraction": 0.5}},
    "seed": 56,
}


def test_pages_taken_during_a_decode_run_neither_crash_nor_leak():
    """Regression: the run ends after the step in progress when a call leaves it too few pages.
    Step by step and fast-forwarded agree on every request's outcome, length and time."""
    from sim.config import SimConfig

    config = SimConfig.model_validate(PAGES_TAKEN_MID_RUN)
    workload = generate(config.workload.model_copy(update={"seed": config.seed}))
    runs = []
    for fast in (True, False):
        cluster = SimCluster(config.cluster)
        for engine in cluster.engines.values():
            engine.fast_forward = fast
        runs.append(cluster.run(workload))
        cluster.check_no_leaks()
    fast, slow = runs
    assert sum(s["preemptions"] for s in fast.engine_stats.values()) > 0  # the hard case did happen
    assert all(r.status == "ok" for r in fast.records + slow.records)
    for a, b in zip(fast.records, slow.records):
        assert (a.request_id, a.output_len) == (b.request_id, b.output_len)
        assert a.token_times == b.token_times


def test_sim_command_says_why_requests_failed_and_fails_when_none_completed(tmp_path, capsys):
    from microserving.cli import main

    (tmp_path / "c.yaml").write_text("cluster:\n  engines: [{count: 1, max_model_len: 100}]\n"
                                     "workload: {num_requests: 5, prompt_len: {kind: fixed, value: 500}}\n")
    assert main(["sim", "--config", str(tmp_path / "c.yaml")]) == 1
    err = capsys.readouterr().err
    assert "5 of 5 requests failed: 5 RequestRejected" in err and "no request completed" in err


def test_relative_paths_in_a_config_are_relative_to_the_config_file(tmp_path, monkeypatch):
    import json as _json
    import shutil
    from pathlib import Path

    from sim.config import load_config

    root = Path(__file__).resolve().parents[1]
    (tmp_path / "conf" / "profiles").mkdir(parents=True)
    shutil.copy(root / "calibration/profiles/cpu-tiny.json", tmp_path / "conf/profiles/p.json")
    (tmp_path / "conf/hf").mkdir()
    (tmp_path / "conf/hf/config.json").write_text(_json.dumps(
        {"model_type": "llama", "num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4,
         "num_key_value_heads": 2, "intermediate_size": 128, "vocab_size": 256}))
    (tmp_path / "conf/c.yaml").write_text(
        "cluster:\n  engines: [{count: 1, model: hf, num_pages: 256}]\n  cost_model: profiles/p.json\n"
        "workload: {num_requests: 3, vocab_size: 256, prompt_len: {kind: fixed, value: 20}}\n")
    monkeypatch.chdir(tmp_path)  # somewhere else than the config
    config = load_config("conf/c.yaml")
    assert config.cluster.cost_model.path == str(tmp_path / "conf/profiles/p.json")
    assert config.cluster.engines[0].model == str(tmp_path / "conf/hf")
    result = SimCluster(config.cluster).run(generate(config.workload))
    assert all(r.status == "ok" for r in result.records)


def test_simulate_ends_with_the_leak_check(monkeypatch):
    """A run that left a page used or reserved must fail loudly, not print metrics and exit 0."""
    from core_api.kv_cache import BlockManager, KVLeakError

    def leaked(self):
        raise KVLeakError("1 pages still referenced [7], 0 reserved")

    monkeypatch.setattr(BlockManager, "check_no_leaks", leaked)
    with pytest.raises(KVLeakError, match="still referenced"):
        simulate(small_sim_config(n=5))


def test_a_long_simulation_reports_each_tenth_of_its_requests(capsys):
    from experiments import sim_cli
    from sim.cluster import simulate
    from sim.config import default_config

    seen = []
    config = default_config().model_copy(update={"workload": default_config().workload.model_copy(
        update={"num_requests": 25})})
    simulate(config, progress=lambda done, total, t: seen.append((done, total, t)))
    assert [d for d, _, _ in seen] == [3, 5, 8, 10, 13, 15, 18, 20, 23, 25]
    assert all(total == 25 for _, total, _ in seen) and [t for *_, t in seen] == sorted(t for *_, t in seen)
    sim_cli.progress_printer()(10, 20, 12.3)
    assert capsys.readouterr().err.startswith("[sim] 10/20 requests done, 12 s simulated")
