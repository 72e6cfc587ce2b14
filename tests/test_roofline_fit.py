"""Fitting the roofline to public measurements: each source format read from a small synthetic file,
a fit that recovers known factors, roofline profiles that price any model and TP on their GPU."""
from __future__ import annotations

import dataclasses

import pytest

from calibration.public_data import Observation, h100_v0_layers, splitwise, vidur_mlp
from calibration.roofline_fit import fit, for_any_gpu, gpu_holdout_fits, mape, to_profile, tp_holdout
from core_api.step import StepFeatures
from sim.cluster import SimCluster
from sim.config import ClusterConfig, EngineConfig
from sim.cost_model import RooflineCostModel, RooflineEfficiency
from sim.cost_models import load_profile
from sim.profile_match import ProfileMismatch
from sim.roofline_profile import RooflineProfile

TRUE = RooflineEfficiency(compute=0.6, memory=0.8, attention=0.4, overlap=0.3, layer_overhead_s=20e-6,
                          step_overhead_s=1e-3, mixed_kv_reread=0.5)


def synthetic_observations(eff: RooflineEfficiency, gpus=("H100-SXM", "A100-80G"), tps=(1, 2),
                           mixed: bool = False) -> list[Observation]:
    """Steps and single linear layers priced by a known roofline; mixed: also steps that batch
    decode rows with a prefill chunk."""
    out = []
    for gpu in gpus:
        for tp in tps:
            cm = RooflineCostModel(gpu, "Llama-3.1-8B", tp, eff)
            for n, b, ctx in ((256, 16, 1024), (1024, 64, 1024), (256, 128, 4096)) if mixed else ():
                f = StepFeatures(prefill_tokens=n, prefill_seqs=1, prefill_attn=n * n / 2, prefill_context=n,
                                 decode_seqs=b, decode_context=b * ctx, decode_max_context=ctx, sampled=b + 1)
                out.append(Observation("engine", gpu, "Llama-3.1-8B", tp, "step", cm.step_time(f), features=f))
            for n in (16, 128, 1024, 4096):
                f = StepFeatures(prefill_tokens=n, prefill_seqs=1, prefill_attn=n * n / 2, prefill_context=n, sampled=1)
                out.append(Observation("engine", gpu, "Llama-3.1-8B", tp, "step", cm.step_time(f), features=f))
            for b in (1, 16, 128):
                for ctx in (256, 4096):
                    f = StepFeatures(decode_seqs=b, decode_context=b * ctx, decode_max_context=ctx, sampled=b)
                    out.append(Observation("engine", gpu, "Llama-3.1-8B", tp, "step", cm.step_time(f), features=f))
            for n in (1, 64, 512, 4096):
                out.append(Observation("engine", gpu, "Llama-3.1-8B", tp, "linear_layer", cm.linear_layer_time(n),
                                       tokens=n))
    return out


def test_a_fit_recovers_the_factors_that_made_the_data():
    obs = synthetic_observations(TRUE)
    fitted = for_any_gpu(fit(obs))
    assert mape(obs, fitted) < 1e-4
    eff = fitted.efficiency(source="engine")
    for name in ("compute", "memory", "attention", "overlap", "layer_overhead_s", "step_overhead_s"):
        assert getattr(eff, name) == pytest.approx(getattr(TRUE, name), rel=0.02, abs=1e-6), name


def test_held_out_tp_and_gpu_are_predicted_when_the_physics_holds():
    obs = synthetic_observations(TRUE, tps=(1, 2, 4))
    rows = tp_holdout(obs)
    assert {(r["gpu"], r["tp_left_out"]) for r in rows} == {(g, t) for g in ("H100-SXM", "A100-80G") for t in (1, 2, 4)}
    assert max(r["heldout_mape"] for r in rows) < 1e-3
    holdout = gpu_holdout_fits(obs)
    assert mape([o for o in obs if o.gpu == "A100-80G"], holdout["A100-80G"]) < 1e-3


def test_per_rank_tables_without_communication_are_compared_without_all_reduces():
    cm = RooflineCostModel("H100-SXM", "Llama-3.1-8B", 2, TRUE)
    f = StepFeatures(decode_seqs=8, decode_context=8 * 512, sampled=8)
    o = Observation("engine", "H100-SXM", "Llama-3.1-8B", 2, "step", cm.step_time(f) - cm.step_allreduce_time(8),
                    features=f, with_allreduce=False)
    assert cm.step_allreduce_time(8) > 0
    assert mape([o], fit(synthetic_observations(TRUE))) < 1e-3


def test_vidur_mlp_rows_become_linear_layer_times(tmp_path):
    ops = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj", "add")
    header = [f"time_stats.{op}.median" for op in ops] + ["n_embd", "n_expanded_embd", "n_head", "num_tokens",
                                                           "num_tensor_parallel_workers"]
    rows = [",".join(header), "0.1,0.02,0.2,0.1,0.5,4096,11008,32,64,1", "0.06,0.01,0.1,0.05,0.5,4096,11008,32,64,2",
            "1,1,1,1,1,999,999,9,64,1"]  # an unknown shape is skipped
    (tmp_path / "mlp.csv").write_text("\n".join(rows) + "\n")
    obs = vidur_mlp(tmp_path / "mlp.csv", "A100-80G")
    assert [(o.model, o.tp, o.tokens, o.kind) for o in obs] == [("Llama-2-7B", 1, 64, "linear_layer"),
                                                                ("Llama-2-7B", 2, 64, "linear_layer")]
    assert obs[0].seconds == pytest.approx(0.42e-3) and obs[1].seconds == pytest.approx(0.22e-3)


def test_hf_layer_timings_sum_the_seven_projections(tmp_path):
    lines = ["layer_name,input,kv_cache,tp_size,latency(ns)"]
    for n in (1, 2, 5):
        lines += [f"{op},{n},0,1,{1000 * n}" for op in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj", "input_layernorm", "attn")]
    (tmp_path / "layers.csv").write_text("\n".join(lines) + "\n")
    obs = h100_v0_layers(tmp_path / "layers.csv", "Llama-3.1-8B", 1)
    assert [(o.tokens, round(o.seconds * 1e9)) for o in obs] == [(1, 7000), (2, 14000)]  # 5 is off the grid kept


def test_splitwise_rows_become_prefill_and_decode_steps(tmp_path):
    head = "model,hardware,prompt_size,batch_size,token_size,peak_power,average_power,prompt_time,token_time," \
           "e2e_time,tensor_parallel"
    rows = [head, "llama2-70b,h100-80gb,512,2,128,1,1,100,30,0,4", "llama2-70b,h100-80gb,512,2,128,1,1,120,32,0,4",
            "llama2-70b,h100-80gb-pcap,512,2,128,1,1,150,40,0,4", "bloom-176b,h100-80gb,512,2,128,1,1,1,1,0,8"]
    (tmp_path / "perf.csv").write_text("\n".join(rows) + "\n")
    pre, dec = splitwise(tmp_path / "perf.csv")
    assert (pre.gpu, pre.model, pre.tp, pre.seconds) == ("H100-SXM", "Llama-2-70B", 4, pytest.approx(0.110))
    assert (pre.features.prefill_tokens, pre.features.prefill_seqs) == (1024, 2)
    assert (dec.features.decode_seqs, dec.features.decode_max_context, dec.seconds) == (2, 576, pytest.approx(0.031))


def test_a_roofline_profile_prices_any_model_and_tp_on_its_gpu_only(tmp_path):
    obs = synthetic_observations(TRUE)
    to_profile(fit(obs).efficiency("H100-SXM", "engine"), "H100-SXM", obs, {"in_sample": 0.0}, "test"
               ).save(tmp_path / "h100.json")
    profile = load_profile(tmp_path / "h100.json")
    assert isinstance(profile, RooflineProfile)
    for model, tp in (("Llama-3.1-70B", 4), ("Qwen3-32B", 2)):
        cluster = SimCluster(ClusterConfig(engines=[EngineConfig(model=model, tp=tp, gpu="H100-SXM")],
                                           cost_model=str(tmp_path / "h100.json")))
        cm = cluster.engines["e0"].cost_model
        assert cm.describe()["efficiency"]["compute"] == pytest.approx(TRUE.compute, rel=0.02)
    with pytest.raises(ProfileMismatch, match="roofline fitted for GPU 'H100-SXM', engine e0 runs on 'A100-80G'"):
        SimCluster(ClusterConfig(engines=[EngineConfig(gpu="A100-80G")], cost_model=str(tmp_path / "h100.json")))


def test_attention_speed_belongs_to_the_engine_that_measured_it_not_to_the_gpu():
    """An old engine's slow attention, the only attention measured on one GPU besides a modern
    engine's, must not become that GPU's attention for every engine: each source keeps its own."""
    slow = TRUE.model_copy(update={"attention": 0.08, "step_overhead_s": 5e-3})
    old_engine = [dataclasses.replace(o, source="old-engine")
                  for o in synthetic_observations(slow, gpus=("A100-80G",))
                  if o.kind == "step" and not o.features.decode_seqs]  # whole prefill steps only
    obs = synthetic_observations(TRUE) + old_engine
    fitted = fit(obs)
    assert fitted.efficiency("A100-80G", "engine").attention == pytest.approx(TRUE.attention, rel=0.02)
    assert fitted.efficiency("A100-80G", "old-engine").attention == pytest.approx(0.08, rel=0.02)
    assert mape(obs, fitted) < 1e-3


def test_a_gpu_off_its_datasheet_moves_its_own_factors_not_the_engines_software_factors():
    """One GPU whose GEMMs reach far more of its datasheet peak than the others' (a card clocked
    above its rated boost): its factors say so, the engine's attention and fixed costs are still
    recovered, and a GPU nobody measured gets the median GPU, not a compromise bent by the outlier."""
    fast = TRUE.model_copy(update={"compute": 0.95, "memory": 0.9})
    obs = synthetic_observations(TRUE, gpus=("H100-SXM", "A100-80G")) + synthetic_observations(fast, gpus=("RTX4090",))
    fitted = fit(obs)
    assert mape(obs, fitted) < 1e-3
    assert fitted.efficiency("RTX4090", "engine").compute == pytest.approx(0.95, rel=0.02)
    typical = for_any_gpu(fitted).efficiency("L40S", "engine")
    for name in ("compute", "memory", "attention", "layer_overhead_s", "step_overhead_s"):
        assert getattr(typical, name) == pytest.approx(getattr(TRUE, name), rel=0.02, abs=1e-6), name
    with pytest.raises(KeyError, match="no factors fitted for GPU 'L40S'"):
        fitted.efficiency("L40S")


def test_how_decode_rows_run_beside_a_prefill_is_fitted_only_on_a_gpu_that_measured_it():
    """One GPU measured mixed batches (its kernels slower than the others' would be): its factor is
    recovered, and a GPU that never mixed prefill and decode, like one nobody profiled, gets the
    measured GPUs' median instead of a value no observation constrained."""
    slow_mixing = TRUE.model_copy(update={"mixed_kv_reread": 1.0})
    obs = synthetic_observations(TRUE, gpus=("H100-SXM",), mixed=True) + synthetic_observations(
        slow_mixing, gpus=("RTX4090",), mixed=True) + synthetic_observations(TRUE, gpus=("A100-80G",))
    fitted = fit(obs)
    assert mape(obs, fitted) < 1e-3
    assert fitted.efficiency("H100-SXM", "engine").mixed_kv_reread == pytest.approx(0.5, rel=0.02)
    assert fitted.efficiency("RTX4090", "engine").mixed_kv_reread == pytest.approx(1.0, rel=0.02)
    assert "mixed_kv_reread" not in fitted.gpus["A100-80G"]
    assert fitted.efficiency("A100-80G", "engine").mixed_kv_reread == pytest.approx(0.75, rel=0.02)
    assert for_any_gpu(fitted).efficiency(source="engine").mixed_kv_reread == pytest.approx(0.75, rel=0.02)


def test_per_rank_layer_tables_give_steps_without_the_all_reduces_the_layer_model_adds(tmp_path):
    """A TP2 layer profile's tables are per rank without communication: the steps composed from
    them for the fit are the tables alone (the layer model prices all-reduces on top, for a replay)."""
    from calibration.importers.vllm_layers import import_bundle
    from calibration.public_data import layer_profile_steps
    from sim.layer_cost_model import LayerCostModel
    from tests.replay_helpers import write_layer_bundle

    tp1 = import_bundle(write_layer_bundle(tmp_path / "bundle"), tp=1)
    tp2 = tp1.model_copy(update={"tp": 2})  # the same tables, read as one rank of two
    steps1, steps2 = layer_profile_steps(tp1, "vllm"), layer_profile_steps(tp2, "vllm")
    assert len(steps2) == len(steps1) > 10 and not any(o.with_allreduce for o in steps2)
    assert [o.seconds for o in steps2] == pytest.approx([o.seconds for o in steps1], rel=1e-12)
    with_comm = LayerCostModel(tp2)
    assert all(with_comm.step_time(o.features) > o.seconds for o in steps2)


def test_a_layer_profile_gives_its_linear_layers_apart_from_its_steps(tmp_path):
    from calibration.importers.vllm_layers import import_bundle
    from calibration.public_data import layer_profile_linear
    from tests.replay_helpers import TOKENS, dense_us, write_layer_bundle

    obs = layer_profile_linear(import_bundle(write_layer_bundle(tmp_path / "bundle"), tp=1), "vllm-linear")
    assert [o.tokens for o in obs] == list(TOKENS) and {o.kind for o in obs} == {"linear_layer"}
    projections = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj")
    assert [o.seconds for o in obs] == pytest.approx([sum(dense_us(op, t) for op in projections) * 1e-6 for t in TOKENS])


def test_calibrate_roofline_writes_every_profile_and_the_errors_by_step_kind(tmp_path, capsys):
    """The whole command on a small data folder in the shared layout: a vLLM layer bundle (RTX 4090)
    and Vidur linear layers (A100)."""
    import json

    from calibration.roofline_report import fit_public_rooflines
    from tests.replay_helpers import LLAMA_META_YAML, write_layer_bundle

    data = tmp_path / "data"
    write_layer_bundle(data / "real_gpu" / "layer_profiles" / "RTX4090_meta-llama_Llama-3.1-8B")
    # A GPU with no preset: left out with a warning naming it, not the end of the whole fit.
    write_layer_bundle(data / "real_gpu" / "layer_profiles" / "X_meta-llama_Llama-3.1-8B",
                       LLAMA_META_YAML.replace("NVIDIA GeForce RTX 4090", "NVIDIA Unknown 9000")
                       .replace("hardware: RTX4090", "hardware: UNKNOWN"))
    vidur = data / "vidur_profiles_more" / "a100_llama2_7b"
    vidur.mkdir(parents=True)
    ops = ("attn_pre_proj", "attn_post_proj", "mlp_up_proj", "mlp_down_proj")
    rows = [",".join([f"time_stats.{op}.median" for op in ops] + ["n_embd", "n_expanded_embd", "n_head", "num_tokens",
                                                                    "num_tensor_parallel_workers"])]
    for tp in (1, 2):
        cm = RooflineCostModel("A100-80G", "Llama-2-7B", tp, TRUE)
        for n in (1, 16, 128, 1024, 4096):
            ms = cm.linear_layer_time(n) * 1e3 / 4
            rows.append(",".join([f"{ms:.6f}"] * 4 + ["4096", "11008", "32", str(n), str(tp)]))
    (vidur / "mlp.csv").write_text("\n".join(rows) + "\n")

    out, said = tmp_path / "profiles", []
    assert fit_public_rooflines(data, out, said.append) == 0
    assert any("unknown GPU 'NVIDIA Unknown 9000'" in m and "left out of the fit" in m for m in said)
    assert not list(out.glob("*Unknown*"))
    for name in ("roofline-RTX4090.json", "roofline-RTX4090.holdout.json", "roofline-A100-80G.json",
                 "roofline-A100-80G.holdout.json", "roofline-any.json"):
        assert load_profile(str(out / name)).kind == "roofline", name
    report = json.loads((out / "roofline-report.json").read_text())
    kinds = report["gpus"]["RTX4090"]["by_step_kind"]
    assert set(kinds["own_fit"]) == set(kinds["gpu_left_out"]) == {"prefill", "decode", "mixed", "linear layer"}
    assert set(report["gpus"]["A100-80G"]["by_step_kind"]["own_fit"]) == {"linear layer"}
    assert report["gpus"]["A100-80G"]["by_step_kind"]["own_fit"]["linear layer"] < 0.01  # priced by a roofline
    printed = capsys.readouterr().out
    assert "by step kind" in printed and "RTX4090" in printed and "mixed" in printed
