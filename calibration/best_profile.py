"""The best cost model the project ships for an engine: what `replay` prices with unless told.

In order of measured fidelity (docs/fidelity.md): a measured layer profile of this GPU, model,
TP degree, dtype and block size; else the roofline fitted on this GPU's public measurements
(`roofline-<gpu>.json`, any model and TP); else the roofline fitted on every GPU (the
simulator's defaults), which is what a GPU nobody profiled gets.
"""
from __future__ import annotations

from pathlib import Path

from sim.config import EngineConfig
from sim.cost_models import load_profile
from sim.layer_profile import LayerProfile
from sim.profile_match import mismatches

SHIPPED = Path(__file__).resolve().parent / "profiles"


def best_cost_model(engine: EngineConfig, profiles: Path = SHIPPED) -> str:
    """The path of the best profile in `profiles` for this engine, or "roofline"."""
    gpu = engine.gpu if isinstance(engine.gpu, str) else engine.gpu.name
    for path in sorted(profiles.glob("*.json")):
        try:
            profile = load_profile(str(path))
        except ValueError:  # ProfileError, or a file of another kind: reports and samples lie here too
            continue
        if isinstance(profile, LayerProfile) and profile.gpu == gpu and not mismatches(profile, engine):
            return str(path)
    fitted = profiles / f"roofline-{gpu}.json"
    return str(fitted) if fitted.is_file() else "roofline"
