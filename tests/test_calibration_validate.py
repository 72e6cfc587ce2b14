"""Profiles meet clusters: mismatch refusal, error intervals, the calibrate CLI, a small validation."""
import json
from pathlib import Path

import numpy as np
import pytest

from calibration.interval import metric_intervals
from calibration.samples import ProfileSamples
from calibration.step_speed import step_speed, untrusted_reasons
from calibration.validate import real_engine_spec, sim_cluster_config
from calibration.validation_report import ValidationCase
from core_api.workload import WorkloadSpec, generate
from microserving.cli import main
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig
from sim.cost_models import parse_cost_model
from sim.measured_host import host_effects, profile_link
from sim.profile import CostProfile
from sim.profile_match import ProfileMismatch

SHIPPED = Path(__file__).resolve().parents[1] / "calibration" / "profiles" / "cpu-tiny.json"


def tiny_profile(tmp_path, **over) -> str:
    data = {"hardware": "cpu: test", "model": "tiny-llama", "dtype": "fp32", "tp": 1, "page_size": 16,
            "engine_version": "test", "coefficients": {"const": 3e-4, "prefill_tokens": 3e-5, "decode_seqs": 1e-4,
                                                       "decode_context": 1e-7},
            "fit_error": {"overall": 0.05}, "sample_count": 10, "created": "2025-01-01", **over}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("engine, needle", [
    ({"model": "Llama-3.1-8B"}, "model 'tiny-llama' != 'Llama-3.1-8B' (num_layers 2 != 32"),
    ({"model": "tiny-llama", "page_size": 32}, "page_size 16 != 32"),
    ({"model": "tiny-llama", "tp": 2}, "tp 1 != 2"),
])
def test_a_profile_for_another_setup_is_refused_naming_the_mismatch(tmp_path, engine, needle):
    cluster = ClusterConfig(engines=[EngineConfig(num_pages=64, **engine)], cost_model=tiny_profile(tmp_path))
    with pytest.raises(ProfileMismatch, match=needle.replace("(", r"\(")):
        SimCluster(cluster)


def test_profiles_match_by_shape_not_name(tmp_path):
    spec = {"name": "tiny", "num_layers": 2, "hidden_size": 64, "num_heads": 4, "num_kv_heads": 2, "ffn_size": 128,
            "vocab_size": 256, "max_context": 4096}
    cluster = ClusterConfig(engines=[EngineConfig(model="tiny-llama", num_pages=64)],
                            cost_model=tiny_profile(tmp_path, model=spec))
    assert SimCluster(cluster).cost_models["e0"]["kind"] == "fitted"
    bf16 = ClusterConfig(engines=[EngineConfig(model="Llama-3.1-8B", dtype="fp8", num_pages=64)],
                         cost_model=tiny_profile(tmp_path, model="Llama-3.1-8B", dtype="bf16"))
    with pytest.raises(ProfileMismatch, match="dtype bf16 != fp8"):
        SimCluster(bf16)


def test_sim_cli_refuses_a_mismatched_profile(tmp_path, capsys):
    assert main(["sim", "--profile", tiny_profile(tmp_path), "--num-requests", "5"]) == 2
    assert "does not match engine e0" in capsys.readouterr().err


def test_intervals_bracket_the_fitted_run(tmp_path):
    cluster = ClusterConfig(engines=[EngineConfig(model="tiny-llama", num_pages=256, count=2)],
                            cost_model=tiny_profile(tmp_path))
    workload = generate(WorkloadSpec(num_requests=30, arrival={"rate": 200.0}, vocab_size=256,
                                     prompt_len={"kind": "uniform", "low": 16, "high": 64},
                                     output_len={"kind": "uniform", "low": 4, "high": 16}))
    iv = metric_intervals(cluster, workload)
    for metric in ("mean_ttft_ms", "mean_tpot_ms", "mean_e2el_ms"):
        lo, mid, hi = iv[metric]
        assert lo < mid < hi
    assert SimCluster(cluster).run(workload).metrics()["mean_e2el_ms"] == pytest.approx(iv["mean_e2el_ms"][1])
    with pytest.raises(ValueError, match="fit_error"):
        metric_intervals(cluster.model_copy(update={"cost_model": parse_cost_model(tiny_profile(tmp_path, fit_error={}))}), workload)


def test_validation_case_matches_the_sim_to_the_real_engines():
    profile = CostProfile.load(SHIPPED)
    wl = WorkloadSpec(num_requests=4, vocab_size=256)
    case = ValidationCase(profile=str(SHIPPED), workload=wl, engine={"num_pages": 300})
    spec = real_engine_spec(case, profile)
    cluster = sim_cluster_config(case, profile, spec)
    e = cluster.engines[0]
    assert (e.count, e.model, e.num_pages, e.page_size) == (2, "tiny-llama", 300, spec.page_size)
    assert (e.max_num_batched_tokens, e.max_num_seqs) == (spec.max_num_batched_tokens, spec.max_num_seqs)
    # fp32 KV on the real engine, bf16 in the simulator: bandwidth restated per simulated byte
    assert profile_link(profile, e).bandwidth_Bps == pytest.approx(profile.transfer.bandwidth_Bps / 2)
    with pytest.raises(ProfileMismatch, match="page_size 16 != 32"):
        sim_cluster_config(case.model_copy(update={"engine": {"page_size": 32}}), profile,
                           real_engine_spec(case.model_copy(update={"engine": {"page_size": 32}}), profile))


def test_calibrate_fit_cli_writes_profile_report_and_predictions(tmp_path, capsys):
    from tests.test_calibration_fit import samples_file

    samples = tmp_path / "samples.json"
    samples_file(np.random.default_rng(0)).save(samples)
    out = tmp_path / "prof" / "p.json"
    assert main(["calibrate", "fit", str(samples), "--out", str(out), "--method", "robust"]) == 0
    profile = CostProfile.load(out)
    assert profile.fit_error["overall"] < 0.05
    report = json.loads((tmp_path / "prof" / "p.report.json").read_text())
    assert report["method"] == "robust" and "mixed" in report["held_out_mape"]
    assert report["form"] == "curve" and report["token_curve"] == profile.token_curve.model_dump()
    rows = (tmp_path / "prof" / "p.predictions.csv").read_text().splitlines()
    assert rows[0].startswith("kind,label,split") and len(rows) > 100
    printed = capsys.readouterr().out
    assert "held-out MAPE" in printed and "token curve      1: " in printed
    assert main(["calibrate", "fit", str(samples), "--out", str(out), "--form", "linear"]) == 0
    line = CostProfile.load(out)
    assert line.token_curve is None and {"const", "prefill_tokens"} <= set(line.coefficients)
    capsys.readouterr()
    assert main(["calibrate", "fit", str(samples), "--out", str(out), "--coefficients", "const,bogus"]) == 2
    assert "unknown coefficient" in capsys.readouterr().err


def test_shipped_profile_is_valid_and_fits_its_samples():
    profile = CostProfile.load(SHIPPED)
    samples = ProfileSamples.load(SHIPPED.with_name("cpu-tiny.samples.json"))
    assert profile.model == "tiny-llama" and profile.page_size == samples.page_size
    assert profile.fit_error["overall"] < 0.10
    assert profile.environment["control"]["threads"] == 1


def test_validate_command_on_a_small_case(tmp_path, capsys):
    out = tmp_path / "val.json"
    rc = main(["calibrate", "validate", "--profile", str(SHIPPED), "--num-requests", "10", "--rate", "20",
               "--prompt-len", "16:64", "--output-len", "4:12", "--engine-opt", "num_pages=256", "--no-interval",
               "--probe-s", "0.5", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "mean_ttft_ms" in text and "median |error|" in text
    (report,) = json.loads(out.read_text())
    assert report["real_failed"] == 0 and report["sim_failed"] == 0
    assert report["cost_model"]["kind"] == "fitted" and report["cost_model"]["profile"] == str(SHIPPED)
    assert (out.parent / report["case"]["profile"]).resolve() == SHIPPED.resolve()  # relative to the report
    for m in report["metrics"].values():
        assert m["real"] > 0 and m["sim"] > 0
    # The engines reported their steps: the speed against the profile, and the rerun at that speed.
    assert set(report["step_speed"]) == {"e0", "e1"} and all(s > 0 for s in report["step_speed"].values())
    assert set(report["at_run_speed"]) == set(report["metrics"])
    # The probe just before the run: its own step speed, and the comparison at that speed.
    assert set(report["probe_step_speed"]) == {"e0", "e1"} and set(report["at_probe_speed"]) == set(report["metrics"])
    assert "at the step speed probed just before each run" in text
    # The shipped profile was measured on the project's VM: anywhere else, that is said.
    from calibration.environment import boot_id

    elsewhere = CostProfile.load(SHIPPED).environment.get("boot_id") != boot_id()
    assert any("another machine" in r for r in report["untrusted"]) == elsewhere
    assert "step speed real/profile" in text and "at the run's measured step speed" in text
    assert "engines waiting, s" in text and set(report["real_wait_s"]) == {"e0", "e1"}
    # The router's CPU, measured and as the simulation charged it: nothing, with a profile that
    # did not measure a router on the engines' cores.
    assert "router CPU-s real/sim" in text and f"{report['real_cpu_s']['router']:.2f}/0.00" in text
    assert report["sim_router_cpu_s"] == 0.0
    # It records what a later resimulation needs, which then gives its comparison back exactly.
    assert report["real_engine"]["num_pages"] == 256 and "listen" not in report["real_engine"]
    assert report["real_boot_id"] == boot_id() and len(report["run_steps"]) == len(report["probe_steps"]) == 1
    from calibration.resimulate import load_reports, resimulate

    (stored,) = load_reports(out)
    again = resimulate(stored, out)
    assert again.metrics == stored.metrics and again.at_run_speed == stored.at_run_speed
    assert again.at_probe_speed == stored.at_probe_speed and again.untrusted == stored.untrusted


def test_step_speed_compares_measured_steps_with_the_profiles_prediction_for_them(tmp_path):
    profile = CostProfile.load(tiny_profile(tmp_path))
    # e0: 100 steps with 1000 prefill tokens, 200 decode rows over 20,000 tokens of context.
    predicted = 100 * 3e-4 + 1000 * 3e-5 + 200 * 1e-4 + 20_000 * 1e-7
    stats = {"e0": {"steps": 100, "loop_s": 1.5 * predicted,
                    "step_features": {"prefill_tokens": 1000, "decode_seqs": 200, "decode_context": 20_000}},
             "e1": {"down": "killed"}}
    assert step_speed(profile, [stats, stats]) == {"e0": pytest.approx(1.5)}
    # With streaming measured, the engine's messages are part of what it should have taken.
    streamed = CostProfile.load(tiny_profile(tmp_path, stream={"message_s": 1e-3, "step_s": 1e-5, "token_s": 1e-6}))
    sent = {"steps": 150, "tokens": 200, "messages": 20}
    stats["e0"]["stream"] = sent
    with_stream = predicted + 150 * 1e-5 + 200 * 1e-6 + 20 * 1e-3
    stats["e0"]["loop_s"] = with_stream
    assert step_speed(streamed, [stats]) == {"e0": pytest.approx(1.0)}
    # Time the engine waited for its core (the router's CPU, charged apart) is not its steps'.
    stats["e0"]["loop_s"] = with_stream + 0.25
    assert step_speed(streamed, [stats], [{"e0": 0.25}]) == {"e0": pytest.approx(1.0)}
    # With the idle cost measured, so are the extras of the steps that ended idle spells, each
    # bin of spells priced at its mean: 3 spells of 10 ms on average, 1 of 100 ms.
    idle = {"idle_s": [0.01, 0.1], "extra_s": [2e-4, 1e-3]}
    cold = CostProfile.load(tiny_profile(tmp_path, stream=streamed.stream.model_dump(), idle=idle))
    stats["e0"]["idle_spells"] = [[-8, 3, 0.03], [-4, 1, 0.1]]  # [bin, count, seconds]
    stats["e0"]["loop_s"] = with_stream + 3 * 2e-4 + 1e-3
    assert step_speed(cold, [stats]) == {"e0": pytest.approx(1.0)}


def test_a_profiles_token_curve_prices_each_step_by_its_tokens(tmp_path):
    curve = {"tokens": [1, 65], "seconds": [1e-3, 4e-3]}
    profile = CostProfile.load(tiny_profile(tmp_path, token_curve=curve, coefficients={"decode_seqs": 1e-4}))
    # 10 steps of 1 token, 20 of 65, 30 of 33 (halfway: 2.5 ms each), 50 decode rows in all.
    predicted = 10 * 1e-3 + 20 * 4e-3 + 30 * 2.5e-3 + 50 * 1e-4
    stats = {"e0": {"steps": 60, "loop_s": 1.2 * predicted, "step_features": {"decode_seqs": 50.0},
                    "steps_by_tokens": {"1": 10, "65": 20, "33": 30}}}
    assert step_speed(profile, [stats]) == {"e0": pytest.approx(1.2)}
    # A report from before engines counted their steps by tokens cannot be priced by a curve.
    del stats["e0"]["steps_by_tokens"]
    assert step_speed(profile, [stats]) == {}


def test_a_run_is_compared_by_its_own_steps_not_its_warm_ups():
    from real.engine_stats import stats_between

    def report(steps, loop_s, prefill, tokens, spells):
        return {"steps": steps, "busy_s": loop_s / 2, "loop_s": loop_s, "running": 0,
                "step_features": {"prefill_tokens": prefill, "decode_seqs": 0.0},
                "stream": {"steps": steps, "tokens": tokens, "messages": tokens // 2}, "idle_spells": spells}

    warm = report(10, 0.5, 800.0, 40, [[-12, 2, 0.002], [1, 1, 2.0]])
    later = report(110, 1.5, 5800.0, 440, [[-12, 5, 0.005], [-6, 1, 0.05], [1, 1, 2.0]])
    warm["steps_by_tokens"], later["steps_by_tokens"] = {"80": 10}, {"80": 10, "50": 100}
    own = stats_between(warm, later)
    assert own["steps_by_tokens"] == {"50": 100}
    assert (own["steps"], own["loop_s"], own["busy_s"]) == (100, 1.0, 0.5)
    assert own["step_features"] == {"prefill_tokens": 5000.0, "decode_seqs": 0.0}
    assert own["stream"] == {"steps": 100, "tokens": 400, "messages": 200}
    assert own["idle_spells"] == [[-12, 3, pytest.approx(0.003)], [-6, 1, 0.05]]  # the 2 s spell was the warm-up's
    assert own["running"] == 0
    assert stats_between(warm, {"down": "killed"}) == {"down": "killed"}


def test_the_probe_is_a_few_seconds_of_the_workload_drawn_with_another_seed():
    from calibration.validate import probe_workload

    spec = WorkloadSpec(num_requests=100, arrival={"process": "poisson", "rate": 25.0}, seed=3)
    case = ValidationCase(profile="p.json", workload=spec, probe_s=2.0)
    probe = list(probe_workload(case))
    run = list(generate(spec))
    assert len(probe) == 50 and probe[-1].arrival_time < 4.0
    assert [r.arrival_time for r in probe[:5]] != [r.arrival_time for r in run[:5]]  # another draw
    burst = case.model_copy(update={"workload": spec.model_copy(update={
        "arrival": spec.arrival.model_copy(update={"rate": float("inf")})})})
    assert len(list(probe_workload(burst))) == case.warmup_requests
    # Far above saturation, two seconds of arrivals would be 126k requests: capped at twice the run.
    flood = case.model_copy(update={"workload": spec.model_copy(update={
        "arrival": spec.arrival.model_copy(update={"rate": 63_000.0})})})
    assert len(list(probe_workload(flood))) == 200


def test_validation_says_when_not_to_trust_it(tmp_path):
    from calibration.environment import boot_id
    from calibration.validation_report import MetricComparison

    here_id = boot_id() or "this-boot"
    here = CostProfile.load(tiny_profile(tmp_path, environment={"boot_id": here_id}))
    calm = {"mean_ttft_ms": MetricComparison(real=10, sim=10.2, rel_error=0.02, real_spread=0.01)}
    assert untrusted_reasons(here, {"e0": 1.03}, 0.0, calm, ran_on=here_id) == []
    reasons = untrusted_reasons(here, {"e0": 1.3}, 0.2, {
        "mean_ttft_ms": MetricComparison(real=10, sim=10.2, rel_error=0.02, real_spread=0.3)}, ran_on=here_id)
    assert len(reasons) == 3
    assert "e0 1.30x the profile's step time" in reasons[0]
    assert "other processes used 20% of the CPU" in reasons[1]
    assert "spread more than the error on mean_ttft_ms" in reasons[2]
    # A probe just before the run that read another speed than the run's: the probed comparison is drift too.
    assert untrusted_reasons(here, {"e0": 1.03, "e1": 0.99}, 0.0, calm, {"e0": 1.02, "e1": 0.99}, ran_on=here_id) == []
    (moved,) = untrusted_reasons(here, {"e0": 1.03, "e1": 0.99}, 0.0, calm, {"e0": 0.96, "e1": 0.99}, ran_on=here_id)
    assert "between the probe and the run (e0 0.96x -> 1.03x, e1 0.99x -> 0.99x" in moved
    elsewhere = CostProfile.load(tiny_profile(tmp_path, environment={"boot_id": "another-boot"}))
    expected = "the profile was measured on another machine (or before a reboot)"
    assert untrusted_reasons(elsewhere, {}, None, calm, ran_on=here_id) == [expected]
    # A report resimulated later is judged by the machine its real runs ran on, not today's.
    assert untrusted_reasons(elsewhere, {}, None, calm, ran_on="another-boot") == []
    assert untrusted_reasons(here, {}, None, calm, ran_on=None) == [
        "the report does not say which machine its real runs ran on"]


def test_validate_with_no_simulated_capacity_says_so_instead_of_dividing_by_zero(capsys):
    rc = main(["calibrate", "validate", "--profile", str(SHIPPED), "--num-requests", "5", "--load", "0.5",
               "--prompt-len", "200:300", "--engine-opt", "max_model_len=64", "--no-interval"])
    assert rc == 2
    assert "simulated capacity is 0 req/s" in capsys.readouterr().err


def test_run_delay_reads_the_kernels_schedstat_and_is_zero_when_it_cannot():
    import os
    import sys

    from calibration.environment import run_delay_seconds

    if sys.platform.startswith("linux") and os.path.exists(f"/proc/{os.getpid()}/schedstat"):
        assert run_delay_seconds(os.getpid()) >= 0.0
    assert run_delay_seconds(2**31 - 1) == 0.0  # no such process


def test_host_effects_come_from_the_profile_at_the_engines_stream_interval(tmp_path):
    bare = CostProfile.load(tiny_profile(tmp_path))
    assert host_effects(bare, 0.005) == {"rpc_latency_s": 0.0, "send_overhead_s": 0.0, "recv_overhead_s": 0.0,
                                         "generate_overhead_s": 0.0, "handoff_generate_overhead_s": 0.0,
                                         "router_cpu_per_token_s": 0.0, "calls_between_steps": True, "stream": None,
                                         "idle": None}
    measured = CostProfile.load(tiny_profile(tmp_path, rpc_latency_s=2e-4, recv_overhead_s=4e-4,
                                             generate_overhead_s=9e-5, handoff_generate_overhead_s=7e-5,
                                             router_cpu_per_token_s=3e-5, stream={
        "interval_s": 0.0, "message_s": 1e-4, "step_s": 1e-5, "token_s": 1e-6},
        idle={"idle_s": [0.001, 0.1], "extra_s": [1e-4, 9e-4]}))
    effects = host_effects(measured, 0.005)
    assert effects["rpc_latency_s"] == 2e-4 and effects["router_cpu_per_token_s"] == 3e-5
    assert effects["recv_overhead_s"] == 4e-4
    assert (effects["generate_overhead_s"], effects["handoff_generate_overhead_s"]) == (9e-5, 7e-5)
    assert effects["stream"].interval_s == 0.005 and effects["stream"].message_s == 1e-4
    assert effects["idle"].seconds(0.1) == 9e-4
    ClusterConfig(engines=[EngineConfig()], **effects)  # what the simulator accepts


def test_a_cluster_config_can_take_its_host_effects_from_its_fitted_profile(tmp_path):
    """`measured_host: true` simulates what `validate` simulates: the profile's link and host effects."""
    profile_path = tiny_profile(tmp_path, rpc_latency_s=2e-4, send_overhead_s=1e-4, transfer={
        "latency_s": 1e-3, "bandwidth_Bps": 1e9}, environment={"kv_bytes_per_token": 2048, "engine": {}},
        stream={"interval_s": 0.005, "message_s": 1e-4, "step_s": 1e-5, "token_s": 1e-6},
        idle={"idle_s": [0.001, 0.1], "extra_s": [1e-4, 9e-4]})
    engines = [{"count": 2, "model": "tiny-llama", "num_pages": 256}]
    measured = SimCluster(ClusterConfig(engines=engines, cost_model=profile_path, measured_host=True))
    profile = CostProfile.load(profile_path)
    by_hand = ClusterConfig(engines=engines, cost_model=profile_path, **host_effects(profile),
                            link=profile_link(profile, EngineConfig(**engines[0])))
    assert measured.config == by_hand  # resolved: what it took is written out
    workload = generate(WorkloadSpec(num_requests=6, vocab_size=256, prompt_len={"kind": "fixed", "value": 40}))
    ran, expected = measured.run(workload).to_dict(), SimCluster(by_hand).run(workload).to_dict()
    assert ran == expected
    rerun = ClusterConfig.model_validate(ran["config"])  # the echo reruns as it ran
    assert SimCluster(rerun).run(workload).to_dict() == expected
    plain = SimCluster(ClusterConfig(engines=engines, cost_model=profile_path)).run(workload).metrics()
    assert plain["mean_e2el_ms"] < ran["metrics"]["mean_e2el_ms"]  # the host effects do cost time
    with pytest.raises(ValueError, match="from a fitted profile; the cost model is 'roofline'"):
        ClusterConfig(engines=engines, measured_host=True)
    with pytest.raises(ValueError, match="measured_host sets link, rpc_latency_s from the profile"):
        ClusterConfig(engines=engines, cost_model=profile_path, measured_host=True, rpc_latency_s=1e-3,
                      link={"latency_s": 0, "bandwidth_Bps": 1e9})
