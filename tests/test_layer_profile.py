"""Measured per-layer profiles: import from the profiler layout, interpolation, step composition."""
from __future__ import annotations

import json

import pytest

from calibration.importers.vllm_layers import import_bundle
from core_api.step import StepFeatures
from sim.cost_models import load_profile
from sim.interpolate import Grid4D, Table1D
from sim.layer_cost_model import LayerCostModel
from sim.layer_profile import LayerProfile
from sim.profile import ProfileError
from tests.replay_helpers import DENSE_OPS, attention_us, dense_us, per_sequence_us, write_layer_bundle


def test_table_is_exact_at_points_linear_between_and_extrapolates_upward():
    t = Table1D([1, 2, 4], [10, 20, 30])
    assert t(2) == 20 and t(3) == 25
    assert t(0) == 10  # below the grid: the first value holds
    assert t(6) == 40  # above: the top two points extrapolate


def test_grid_reproduces_a_multilinear_function_between_grid_points():
    axis = (0, 16, 256, 4096)
    rows = [(a, b, c, d, attention_us(a, b, c, d)) for a in axis for b in axis for c in (1, 8, 64) for d in axis]
    g = Grid4D(rows)
    for q in ((16, 16, 1, 16), (100, 700, 5, 3000), (2000, 50, 40, 1000)):
        assert g(*q) == pytest.approx(attention_us(*q), rel=1e-9)


def test_import_reads_every_table_and_composes_the_step_as_the_model_runs(tmp_path):
    profile = import_bundle(write_layer_bundle(tmp_path / "bundle"), tp=1)
    assert profile.model_name == "Llama-3.1-8B" and profile.gpu == "RTX4090" and profile.tp == 1
    assert profile.per_layer["layernorm"] == 2 and profile.per_step == {"embedding": 1, "final_layernorm": 1}
    assert profile.decode_skew_alpha == 0.05
    # The made-up times are linear, so interpolation is exact and the held-out error is ~0.
    assert max(profile.fit_error.values()) < 1e-9
    assert {"dense.qkv_proj", "per_sequence.lm_head", "attention.kv_decode"} <= set(profile.fit_error)

    model = LayerCostModel(profile)
    layers = model.model.num_layers
    # A mixed step: one 256-token chunk over 1024 cached tokens, 16 decodes of context 1024 each.
    f = StepFeatures(prefill_tokens=256, prefill_seqs=1, prefill_context=1024 + 256, decode_seqs=16,
                     decode_context=16 * 1024, decode_max_context=1024, sampled=17)
    tokens = 256 + 16
    per_layer = sum((2 if op == "layernorm" else 1) * dense_us(op, tokens) for op in DENSE_OPS
                    if op not in ("embedding", "final_layernorm"))
    expected_us = (dense_us("embedding", tokens) + dense_us("final_layernorm", tokens) + layers * per_layer
                   + layers * attention_us(256, 1024, 16, 1024)
                   + per_sequence_us("lm_head", 17) + per_sequence_us("sampler", 17))
    assert model.step_time(f) == pytest.approx(expected_us * 1e-6, rel=1e-9)


def test_mixed_decode_lengths_move_attention_towards_the_longest_by_alpha(tmp_path):
    model = LayerCostModel(import_bundle(write_layer_bundle(tmp_path / "b"), tp=1))
    uniform = StepFeatures(decode_seqs=16, decode_context=16 * 1024, decode_max_context=1024, sampled=16)
    skewed = StepFeatures(decode_seqs=16, decode_context=16 * 1024, decode_max_context=4096, sampled=16)
    extra = 0.05 * (attention_us(0, 0, 16, 4096) - attention_us(0, 0, 16, 1024)) * model.model.num_layers
    assert model.step_time(skewed) - model.step_time(uniform) == pytest.approx(extra * 1e-6, rel=1e-9)


def test_a_saved_layer_profile_loads_by_its_kind(tmp_path):
    profile = import_bundle(write_layer_bundle(tmp_path / "b"), tp=1)
    profile.save(tmp_path / "p.json")
    loaded = load_profile(tmp_path / "p.json")
    assert isinstance(loaded, LayerProfile) and loaded == profile


def test_import_errors_name_the_file_and_what_is_wrong(tmp_path):
    bundle = write_layer_bundle(tmp_path / "b")
    with pytest.raises(ProfileError, match="no tp2/ folder; measured: tp1"):
        import_bundle(bundle, tp=2)
    (bundle / "tp1" / "dense.csv").write_text("layer,tokens\nqkv_proj,1\n")
    with pytest.raises(ProfileError, match=r"dense.csv: missing column\(s\) time_us"):
        import_bundle(bundle, tp=1)
    (bundle / "tp1" / "dense.csv").write_text("layer,tokens,time_us\nqkv_proj,1,fast\n")
    with pytest.raises(ProfileError, match=r"dense.csv:2: column time_us is not a number"):
        import_bundle(bundle, tp=1)
    (bundle / "tp1" / "dense.csv").write_text("layer,tokens,time_us\nqkv_proj,1," + "1" * 200_000 + "\n")
    with pytest.raises(ProfileError, match=r"dense.csv: not CSV text: field larger than field limit"):
        import_bundle(bundle, tp=1)
    (bundle / "tp1" / "dense.csv").write_bytes(b"\xff\xfe garbage")
    with pytest.raises(ProfileError, match=r"dense.csv: not CSV text"):
        import_bundle(bundle, tp=1)
    (bundle / "meta.yaml").write_text("model: &m [" + ", ".join(["*m"] * 2) + "]\n")
    with pytest.raises(ProfileError, match=r"meta.yaml: a value contains itself"):
        import_bundle(bundle, tp=1)


def test_a_profile_missing_a_counted_operator_is_refused_naming_it(tmp_path):
    profile = import_bundle(write_layer_bundle(tmp_path / "b"), tp=1)
    data = json.loads(profile.model_dump_json())
    del data["dense"]["o_proj"]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match=r"\['o_proj'\].*no dense curve"):
        load_profile(tmp_path / "bad.json")
    data = json.loads(profile.model_dump_json())
    data["attention"]["us"] = data["attention"]["us"][:-1]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ProfileError, match="attention"):
        load_profile(tmp_path / "bad.json")
