"""`microserving replay`: a run written in the real-run format replays to its own metrics exactly;
malformed run directories fail with the file and field named."""
from __future__ import annotations

import json
import shutil

import pytest

from calibration.best_profile import SHIPPED, best_cost_model
from calibration.importers.vllm_layers import import_bundle
from calibration.real_run import RunDirError, load_run
from calibration.replay import engine_config, replay, strategy_for
from calibration.run_writer import write_run
from core_api.scheduler_config import SchedulingPolicy
from microserving.cli import main
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig
from tests.replay_helpers import burst_workload, write_layer_bundle

NUM_PAGES = 300  # small enough that the burst preempts


def simulated_run(tmp_path, cost_model="roofline", prefix_caching=True, engines=1, model="Llama-3.1-8B",
                  kv_dtype=None):
    engine = EngineConfig(gpu="RTX4090", model=model, kv_dtype=kv_dtype, num_pages=NUM_PAGES, max_num_seqs=16,
                          max_num_batched_tokens=512, max_model_len=4096,
                          policy=SchedulingPolicy.vllm(prefix_caching=prefix_caching), count=engines)
    cluster = SimCluster(ClusterConfig(engines=[engine], strategy=StrategyConfig(name=strategy_for(engines)),
                                       cost_model=cost_model))
    workload = burst_workload()
    result = cluster.run(workload)
    return write_run(result, engine, workload, tmp_path / "run", NUM_PAGES), result


@pytest.mark.parametrize("prefix_caching", [True, False])
def test_a_written_simulated_run_replays_to_its_own_metrics_exactly(tmp_path, prefix_caching):
    run_dir, original = simulated_run(tmp_path, prefix_caching=prefix_caching)
    stats = original.engine_stats["e0"]
    assert stats["preemptions"] > 0  # the hard case: KV pressure, vLLM's admission and preemption
    assert (stats["prefix_hit_tokens"] > 0) == prefix_caching
    run = load_run(run_dir)
    assert run.prompts is not None  # token ids found through meta.json's dataset_path
    replayed = replay(run, "roofline")
    for key, v in replayed.metrics().items():
        assert v["sim"] == v["real"], key
        assert v["diff_pct"] == 0.0
    assert replayed.result.engine_stats["e0"]["preemptions"] == stats["preemptions"]


def test_a_run_with_fp8_weights_and_16_bit_kv_replays_to_its_own_metrics_exactly(tmp_path):
    from sim.hardware import get_model

    run_dir, original = simulated_run(tmp_path, model=get_model("Llama-3.1-8B", "fp8"), kv_dtype="bf16")
    replayed = replay(load_run(run_dir), "roofline")
    assert all(v["diff_pct"] == 0.0 for v in replayed.metrics().values())
    assert replayed.result.engine_stats["e0"]["preemptions"] == original.engine_stats["e0"]["preemptions"]


def test_a_data_parallel_run_replays_on_as_many_engines_balanced_as_vllm_balances_them(tmp_path):
    run_dir, original = simulated_run(tmp_path, engines=3)
    engines = {r.tags["engine"] for r in original.records}
    assert engines == {"e0", "e1", "e2"}
    assert all(original.engine_stats[e]["preemptions"] > 0 for e in engines)  # each rank under KV pressure
    assert json.loads((run_dir / "meta.json").read_text())["engine_kwargs"]["data_parallel_size"] == 3
    replayed = replay(load_run(run_dir), "roofline")
    assert all(v["diff_pct"] == 0.0 for v in replayed.metrics().values())
    routed = {r.request_id.rsplit("-", 1)[0]: r.tags["engine"] for r in replayed.result.records}  # ids gain "-<line>"
    assert routed == {r.request_id: r.tags["engine"] for r in original.records}
    assert len(replayed.queue_traces) == 3


def test_a_meta_json_claiming_absurd_sizes_is_refused_by_field(tmp_path):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    for section, field, value in (("engine_kwargs", "data_parallel_size", 10**6),
                                  ("engine_kwargs", "tensor_parallel_size", 10**6),
                                  ("kv_cache", "num_gpu_blocks", 10**12)):
        bad = json.loads(json.dumps(meta))
        bad[section][field] = value
        (run_dir / "meta.json").write_text(json.dumps(bad))
        with pytest.raises(RunDirError, match=rf"meta.json: {section}.{field}: .*less than or equal"):
            load_run(run_dir)


def test_pipeline_parallel_runs_are_refused_by_name(tmp_path):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "resolved_config": {
        "parallel_config": {"tensor_parallel_size": 1, "pipeline_parallel_size": 2}}}))
    with pytest.raises(RunDirError, match="pipeline_parallel_size 2 is not modelled"):
        engine_config(load_run(run_dir), "RTX4090")


def test_a_run_priced_by_a_layer_profile_replays_exactly_with_that_profile(tmp_path):
    profile = import_bundle(write_layer_bundle(tmp_path / "bundle"), tp=1)
    profile.save(tmp_path / "profile.json")
    run_dir, _ = simulated_run(tmp_path, cost_model=str(tmp_path / "profile.json"))
    replayed = replay(load_run(run_dir), str(tmp_path / "profile.json"))
    assert all(v["diff_pct"] == 0.0 for v in replayed.metrics().values())
    assert replayed.result.cost_models["e0"]["kind"] == "layers"


def test_replay_json_output_and_files(tmp_path, capsys):
    run_dir, _ = simulated_run(tmp_path)
    assert main(["replay", str(run_dir), "--cost-model", "roofline", "--json", "--out", str(tmp_path / "out")]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["cost_model"] == "roofline"
    keys = {f"{s}_{m}_ms" for s in ("mean", "median", "p90", "p95", "p99") for m in ("ttft", "tpot", "e2el")}
    assert set(doc["metrics"]) == keys
    assert set(doc["metrics"]["mean_ttft_ms"]) == {"real", "sim", "diff_pct"}
    written = {p.name for p in (tmp_path / "out").iterdir()}
    assert written == {"requests.csv", "metrics.json", "queue.csv", "cdf.png", "queue.png"}
    lines = (tmp_path / "out" / "requests.csv").read_text().splitlines()
    assert len(lines) == 41 and lines[0].startswith("request_id,input_toks,output_toks,arrival_s,real_ttft_ms")


def test_missing_files_and_fields_are_named(tmp_path, capsys):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    lines = (run_dir / "requests.jsonl").read_text().splitlines()

    (run_dir / "requests.jsonl").rename(tmp_path / "kept.jsonl")
    with pytest.raises(RunDirError, match="missing requests.jsonl"):
        load_run(run_dir)
    (tmp_path / "kept.jsonl").rename(run_dir / "requests.jsonl")

    bad = json.loads(lines[3])
    del bad["first_token_ts"]
    (run_dir / "requests.jsonl").write_text("\n".join(lines[:3] + [json.dumps(bad)] + lines[4:]) + "\n")
    with pytest.raises(RunDirError, match=r"requests.jsonl:4: first_token_ts: Field required"):
        load_run(run_dir)
    bad = json.loads(lines[3])
    bad["input_toks"] = 10**12
    (run_dir / "requests.jsonl").write_text("\n".join(lines[:3] + [json.dumps(bad)] + lines[4:]) + "\n")
    with pytest.raises(RunDirError, match=r"requests.jsonl:4: input_toks: Input should be less than or equal"):
        load_run(run_dir)
    bad = json.loads(lines[3])
    bad["queued_ts"] = bad["last_token_ts"] + 1
    (run_dir / "requests.jsonl").write_text("\n".join(lines[:3] + [json.dumps(bad)] + lines[4:]) + "\n")
    with pytest.raises(RunDirError, match=r"requests.jsonl:4: .*queued_ts <= first_token_ts"):
        load_run(run_dir)
    (run_dir / "requests.jsonl").write_text("\n".join(lines) + "\n")

    (run_dir / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "engine_kwargs"}))
    with pytest.raises(RunDirError, match="meta.json: engine_kwargs: Field required"):
        load_run(run_dir)

    (run_dir / "meta.json").write_text(json.dumps({**meta, "hardware": {"device_name": "Some Future GPU"}}))
    with pytest.raises(RunDirError, match="'Some Future GPU' has no GPU preset; pass --gpu"):
        replay(load_run(run_dir))
    (run_dir / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "hardware"}))
    with pytest.raises(RunDirError, match="no hardware.device_name; pass --gpu"):
        replay(load_run(run_dir))
    assert replay(load_run(run_dir), "roofline", gpu="RTX4090").metrics()["mean_ttft_ms"]["diff_pct"] == 0.0

    assert main(["replay", str(tmp_path / "nowhere")]) == 2
    assert "nowhere: not a directory" in capsys.readouterr().err
    assert main(["replay", str(run_dir), "--workload", str(tmp_path / "none.jsonl")]) == 2
    assert "none.jsonl: workload file not found" in capsys.readouterr().err


def test_workload_token_ids_must_line_up_with_the_log(tmp_path):
    run_dir, _ = simulated_run(tmp_path)
    rows = (run_dir / "workload.jsonl").read_text().splitlines()
    first = json.loads(rows[0])
    first["input_tok_ids"] = first["input_tok_ids"][:-1]
    (run_dir / "workload.jsonl").write_text("\n".join([json.dumps(first)] + rows[1:]) + "\n")
    with pytest.raises(RunDirError, match="line 1 has no input_tok_ids of length"):
        load_run(run_dir)


def test_the_engine_is_built_from_what_vllm_resolved_then_what_it_was_passed(tmp_path):
    """vLLM fills in defaults the recorder never passed; its resolved config says what ran."""
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    resolved = {"scheduler_config": {"max_num_seqs": 8, "max_num_batched_tokens": 256},
                "model_config": {"max_model_len": 2048, "dtype": "torch.bfloat16", "quantization": None},
                "parallel_config": {"tensor_parallel_size": 2},
                "cache_config": {"block_size": 32, "num_gpu_blocks": 101, "enable_prefix_caching": False}}
    (run_dir / "meta.json").write_text(json.dumps({**meta, "resolved_config": resolved}))
    engine = engine_config(load_run(run_dir), "RTX4090")
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.max_model_len, engine.tp) == (8, 256, 2048, 2)
    assert engine.count == 1  # data_parallel_size: resolved (absent here), else passed (1), else 1
    assert (engine.page_size, engine.num_pages, engine.policy.prefix_caching) == (32, 100, False)
    # Without it, what the recorder passed; without that, vLLM's defaults.
    (run_dir / "meta.json").write_text(json.dumps({**meta, "engine_kwargs": {"max_num_seqs": 8}, "kv_cache": None}))
    engine = engine_config(load_run(run_dir), "RTX4090")
    assert (engine.max_num_seqs, engine.max_num_batched_tokens, engine.tp, engine.page_size) == (8, 2048, 1, 16)


@pytest.mark.parametrize("model,kwargs,dtype", [
    ("Llama-3.1-8B", {"quantization": "fp8"}, "fp8"),
    ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", {}, "fp8"),
    ("neuralmagic/Meta-Llama-3.1-8B-Instruct-FP8", {"quantization": "compressed-tensors"}, "fp8"),
    ("meta-llama/Meta-Llama-3.1-8B-Instruct", {"dtype": "auto"}, "bf16")])
def test_fp8_checkpoints_are_priced_in_fp8(tmp_path, model, kwargs, dtype):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "model": model, "engine_kwargs": kwargs}))
    engine = engine_config(load_run(run_dir), "H100-SXM")
    assert engine.model.dtype == dtype and engine.model.num_layers == 32


@pytest.mark.parametrize("kv_cache_dtype,weights,kv_bytes", [
    ("auto", "fp8", 2), ("fp8", "fp8", 1), ("auto", "bfloat16", 2), ("fp8_e4m3", "bfloat16", 1)])
def test_the_kv_cache_dtype_is_the_runs_not_the_weights(tmp_path, kv_cache_dtype, weights, kv_bytes):
    """vLLM's kv_cache_dtype "auto" keeps 16-bit KV even for FP8 weights; fp8 formats store one byte."""
    from sim.hardware import kv_bytes_per_token

    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta["engine_kwargs"].update(dtype=weights, kv_cache_dtype=kv_cache_dtype)
    (run_dir / "meta.json").write_text(json.dumps(meta))
    engine = engine_config(load_run(run_dir), "H100-SXM")
    assert engine.model_spec().dtype == ("fp8" if weights == "fp8" else "bf16")
    assert kv_bytes_per_token(engine.model_spec()) == 2 * 32 * 8 * 128 * kv_bytes
    meta["engine_kwargs"]["kv_cache_dtype"] = "int4"
    (run_dir / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(RunDirError, match="kv_cache_dtype 'int4' is not modelled"):
        engine_config(load_run(run_dir), "H100-SXM")


def test_a_quantization_the_simulator_does_not_model_is_named(tmp_path):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({**meta, "engine_kwargs": {"quantization": "awq"}}))
    with pytest.raises(RunDirError, match="quantization 'awq' is not modelled"):
        engine_config(load_run(run_dir), "H100-SXM")


def test_replay_prices_with_the_best_profile_shipped_for_the_run(tmp_path, capsys):
    """A measured layer profile of the run's GPU, model and TP; else the roofline fitted on its GPU;
    else the roofline defaults."""
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    import_bundle(write_layer_bundle(tmp_path / "bundle"), tp=1).save(profiles / "rtx4090-llama-3.1-8b-tp1.json")
    shutil.copy(SHIPPED / "roofline-RTX4090.json", profiles)
    (profiles / "roofline-report.json").write_text('{"observations": 3}')  # not a profile: skipped
    engine = EngineConfig(gpu="RTX4090", model="Llama-3.1-8B")
    assert best_cost_model(engine, profiles) == str(profiles / "rtx4090-llama-3.1-8b-tp1.json")
    assert best_cost_model(engine.model_copy(update={"tp": 2}), profiles) == str(profiles / "roofline-RTX4090.json")
    assert best_cost_model(engine.model_copy(update={"model": "Qwen3-8B"}), profiles).endswith("roofline-RTX4090.json")
    assert best_cost_model(engine.model_copy(update={"gpu": "L40S"}), profiles) == "roofline"
    run_dir, _ = simulated_run(tmp_path)
    assert main(["replay", str(run_dir), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["cost_model"].endswith("rtx4090-llama-3.1-8b-tp1.json")


def test_a_run_without_a_device_name_takes_its_gpu_from_the_bundles_simulator_config(tmp_path):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    (run_dir / "meta.json").write_text(json.dumps({k: v for k, v in meta.items() if k != "hardware"}))
    config = {"nodes": [{"instances": [{"hardware": "RTX4090", "tp_size": 1}]}]}
    (run_dir / "llmservingsim_config.json").write_text(json.dumps(config))
    assert replay(load_run(run_dir), "roofline").metrics()["mean_ttft_ms"]["diff_pct"] == 0.0
    config["nodes"][0]["instances"][0]["hardware"] = "TPUv9"
    (run_dir / "llmservingsim_config.json").write_text(json.dumps(config))
    with pytest.raises(RunDirError, match="llmservingsim_config.json: hardware 'TPUv9' has no GPU preset"):
        replay(load_run(run_dir), "roofline")
    (run_dir / "llmservingsim_config.json").write_text(json.dumps({"nodes": "?"}))
    run = load_run(run_dir)  # only a hint: left out with a warning
    assert run.hardware_hint is None
    assert run.warnings == [f"{run_dir}/llmservingsim_config.json: left out (expected nodes[].instances[].hardware)"]
    with pytest.raises(RunDirError, match="no hardware.device_name; pass --gpu"):
        replay(run, "roofline")


def test_a_queue_log_that_cannot_be_read_is_left_out_with_a_warning(tmp_path, capsys):
    """timeseries.csv is a diagnostic: extra columns of any kind are fine; a file without the
    queue's columns is left out with a warning, and the replay still runs."""
    run_dir, _ = simulated_run(tmp_path)
    (run_dir / "timeseries.csv").write_text("t,running,waiting,note\n1.0,3,0,warm\n2.0,4,1,\n")
    run = load_run(run_dir)
    assert list(run.timeseries["running"]) == [3.0, 4.0] and not run.warnings
    (run_dir / "timeseries.csv").write_text("time,num_running\n1.0,3\n")
    assert load_run(run_dir).timeseries is None
    assert main(["replay", str(run_dir), "--cost-model", "roofline", "--json"]) == 0
    out = capsys.readouterr()
    assert "timeseries.csv: left out (needs columns t, running, waiting)" in out.err
    assert json.loads(out.out)["metrics"]["mean_ttft_ms"]["diff_pct"] == 0.0


def test_a_run_that_recorded_no_kv_blocks_is_replayed_with_an_estimate_and_says_so(tmp_path, capsys):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    meta.pop("kv_cache")
    meta.pop("resolved_config", None)
    (run_dir / "meta.json").write_text(json.dumps(meta))
    assert main(["replay", str(run_dir), "--cost-model", "roofline", "--json"]) == 0
    out, err = capsys.readouterr()
    assert "meta.json records no kv_cache.num_gpu_blocks: KV capacity estimated from the GPU's memory as" in err
    assert [w for w in json.loads(out)["warnings"] if "KV capacity estimated" in w]  # for scripts too
    assert replay(load_run(run_dir), "roofline").result.engine_stats["e0"]["preemptions"] == 0  # 24 GB, not 300 pages
    run_dir_recorded, _ = simulated_run(tmp_path / "recorded")
    assert replay(load_run(run_dir_recorded), "roofline").warnings == []


def test_batch_limits_the_run_does_not_record_are_assumed_and_said(tmp_path):
    run_dir, _ = simulated_run(tmp_path)
    meta = json.loads((run_dir / "meta.json").read_text())
    del meta["engine_kwargs"]["max_num_batched_tokens"]
    (run_dir / "meta.json").write_text(json.dumps(meta))
    run = load_run(run_dir)
    assert run.meta.settings().assumed == (("max_num_batched_tokens", 2048),)
    warnings = replay(run, "roofline").warnings
    assert len(warnings) == 1 and "records neither the resolved nor the passed max_num_batched_tokens: " \
        "assumed max_num_batched_tokens 2048" in warnings[0]
    meta["resolved_config"] = {"scheduler_config": {"max_num_batched_tokens": 512}}
    (run_dir / "meta.json").write_text(json.dumps(meta))
    assert load_run(run_dir).meta.settings().assumed == ()  # what vLLM resolved counts as recorded


def test_the_simulated_queue_sums_every_engines_latest_state_at_each_tick():
    from calibration.replay_cli import _sim_queue_at

    traces = [[(0.5, 2, 1, 0.0), (1.5, 3, 0, 0.0)], [(0.2, 1, 4, 0.0)], []]
    assert _sim_queue_at(traces, [0.1, 1.0, 2.0]) == [(0.1, 0, 0), (1.0, 3, 5), (2.0, 4, 4)]


def test_a_replay_reports_its_progress_when_asked(tmp_path):
    run_dir, _ = simulated_run(tmp_path)
    seen = []
    replay(load_run(run_dir), "roofline", progress=lambda done, total, t: seen.append((done, total)))
    assert seen[-1] == (40, 40) and len(seen) == 10  # each tenth of the 40 requests
