"""A new kind of cost model is one registration: a profile file with its `kind` is read and priced
by what was registered for that kind, with no edit to the cluster; unknown kinds are named."""
from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from core_api.step import StepFeatures
from sim import cost_models
from sim.cluster import simulate
from sim.config import ClusterConfig, EngineConfig, SimConfig
from sim.profile import ProfileError


@dataclass
class FlatProfile:
    kind: str
    step_s: float


class FlatCostModel:
    """Every non-empty step takes the same time: the simplest model there is."""

    def __init__(self, step_s: float) -> None:
        self.step_s = step_s

    def step_time(self, f: StepFeatures) -> float:
        return self.step_s if (f.prefill_tokens or f.decode_seqs) else 0.0

    def describe(self) -> dict:
        return {"kind": "flat", "step_s": self.step_s}


@pytest.fixture
def flat_kind(monkeypatch):
    monkeypatch.setattr(cost_models, "_KINDS", dict(cost_models._kinds()))
    cost_models.register("flat", lambda data, source: FlatProfile("flat", float(data["step_s"])),
                         lambda profile, cluster, engine, engine_id, path: FlatCostModel(profile.step_s))


def _config(cost_model: str) -> SimConfig:
    return SimConfig(cluster=ClusterConfig(engines=[EngineConfig(count=2)], cost_model=cost_model),
                     workload={"num_requests": 20, "arrival": {"rate": 1.0},
                               "prompt_len": {"kind": "uniform", "low": 32, "high": 64},
                               "output_len": {"kind": "uniform", "low": 4, "high": 8}})


def test_a_registered_kind_prices_the_simulation(flat_kind, tmp_path):
    path = tmp_path / "flat.json"
    path.write_text(json.dumps({"kind": "flat", "step_s": 0.05}))
    result = simulate(_config(str(path)))
    assert result.cost_models["e0"] == {"kind": "flat", "step_s": 0.05}
    tpot = result.metrics()["mean_tpot_ms"]
    assert tpot == pytest.approx(50.0, rel=0.05), "every decode step costs the flat 50 ms"


def test_an_unknown_kind_is_named_with_the_known_ones(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text(json.dumps({"kind": "odd"}))
    with pytest.raises(ProfileError, match="unknown profile kind 'odd'; known: layers, roofline"):
        simulate(_config(str(path)))
