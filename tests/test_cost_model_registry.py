"""A new kind of cost model is one registration: its spec (the fields a cluster's `cost_model`
gives it) and its builder, with no edit to the cluster; a profile file of that kind is read by
what was registered for it; unknown kinds and mismatched settings are named."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

import pytest
from pydantic import ValidationError

from core_api.step import StepFeatures
from sim import cost_models
from sim.cluster import simulate
from sim.config import ClusterConfig, EngineConfig, SimConfig, load_config


@dataclass
class FlatProfile:
    step_s: float


class FlatCostModel:
    """Every non-empty step takes the same time: the simplest model there is."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s

    def step_time(self, f: StepFeatures) -> float:
        return self.step_s if (f.prefill_tokens or f.decode_seqs) else 0.0

    def describe(self) -> dict:
        return {"kind": "flat", "step_s": self.step_s}


class FlatSpec(cost_models.CostModelSpec):
    kind: Literal["flat"] = "flat"
    step_s: float | None = None  # given inline, or
    path: str | None = None  # read from a profile file of kind "flat"


def _build_flat(spec: FlatSpec, cluster, engine, engine_id) -> FlatCostModel:
    step_s = spec.step_s if spec.path is None else cost_models.load_profile(spec.path, "flat").step_s
    return FlatCostModel(step_s)


@pytest.fixture
def flat_kind(monkeypatch):
    monkeypatch.setattr(cost_models, "_KINDS", dict(cost_models._kinds()))
    cost_models.register(FlatSpec, _build_flat, lambda data, source: FlatProfile(float(data["step_s"])))


WORKLOAD = {"num_requests": 20, "arrival": {"rate": 1.0}, "prompt_len": {"kind": "uniform", "low": 32, "high": 64},
            "output_len": {"kind": "uniform", "low": 4, "high": 8}}


def _config(cost_model) -> SimConfig:
    return SimConfig(cluster=ClusterConfig(engines=[EngineConfig(count=2)], cost_model=cost_model), workload=WORKLOAD)


def test_a_registered_kind_prices_the_simulation_inline_or_from_its_profile(flat_kind, tmp_path):
    path = tmp_path / "flat.json"
    path.write_text(json.dumps({"kind": "flat", "step_s": 0.05}))
    for setting in ({"kind": "flat", "step_s": 0.05}, str(path), {"kind": "flat", "path": str(path)}):
        result = simulate(_config(setting))
        assert result.cost_models["e0"] == {"kind": "flat", "step_s": 0.05}
        assert result.metrics()["mean_tpot_ms"] == pytest.approx(50.0, rel=0.05), "every decode step costs 50 ms"


def test_unknown_kinds_are_named_with_the_known_ones(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"kind": "odd"}))
    with pytest.raises(ValidationError, match="unknown profile kind 'odd'; known: layers, roofline"):
        _config(str(path))
    with pytest.raises(ValidationError, match="unknown cost model kind 'odd'; known: fitted, layers, roofline"):
        _config({"kind": "odd"})


def test_a_profile_of_another_kind_than_the_setting_is_refused(tmp_path):
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"kind": "roofline"}))
    with pytest.raises(ValueError, match="a roofline profile, but the cost model is 'layers'"):
        simulate(_config({"kind": "layers", "path": str(path)}))
    with pytest.raises(ValidationError, match="path"):
        _config({"kind": "fitted"})  # a fitted model without its profile


def test_efficiency_is_a_field_of_the_roofline_and_the_old_place_says_where_it_went():
    slow = simulate(_config({"kind": "roofline", "efficiency": {"compute": 0.1, "memory": 0.1}})).metrics()
    fast = simulate(_config("roofline")).metrics()
    assert slow["mean_tpot_ms"] > 2 * fast["mean_tpot_ms"]
    with pytest.raises(ValidationError, match="cost_model: {kind: roofline, efficiency"):
        ClusterConfig(engines=[EngineConfig()], efficiency={"compute": 0.5})


def test_a_profile_path_in_a_config_file_resolves_against_the_file(tmp_path):
    (tmp_path / "conf" / "profiles").mkdir(parents=True)
    (tmp_path / "conf" / "profiles" / "r.json").write_text(json.dumps({
        "kind": "roofline", "source": {"name": "test"}, "gpu": None, "efficiency": {}, "sample_count": 0,
        "created": "2026-12-02"}))
    (tmp_path / "conf" / "sim.json").write_text(json.dumps({
        "cluster": {"engines": [{}], "cost_model": {"kind": "roofline", "path": "profiles/r.json"}},
        "workload": WORKLOAD}))
    config = load_config(tmp_path / "conf" / "sim.json")
    assert config.cluster.cost_model.path == str(tmp_path / "conf" / "profiles" / "r.json")
    assert simulate(config).metrics()["completed"] == 20
