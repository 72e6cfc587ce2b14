"""Cost models by kind: how a cluster's `cost_model` setting becomes each engine's CostModel.

`cost_model: roofline` is the datasheet roofline, with the cluster's `efficiency` overrides. Any
other value is the path of a profile file whose `kind` field names how it is read and built:
`layers` (measured per-layer tables, sim.layer_cost_model), `roofline` (fitted efficiency
factors, sim.roofline_profile), or no `kind`: a fitted linear step model (here). A new kind of
cost model is one module that defines its profile and calls `register(kind, load, build)`, plus
its name in BUILTIN_MODULES (imported on the first lookup, as strategies are).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sim.config import ClusterConfig, EngineConfig
from sim.cost_model import CostModel, FittedCostModel, RooflineCostModel
from sim.hardware import get_model
from sim.profile import CostProfile, ProfileError, read_json
from sim.profile_match import check_profile_matches

# load(json data, source path) -> profile; build(profile, cluster, engine, engine id, path) -> CostModel
Load = Callable[[dict, str], Any]
Build = Callable[[Any, ClusterConfig, EngineConfig, "str | None", str], CostModel]
BUILTIN_MODULES = ("sim.layer_cost_model", "sim.roofline_profile")
_KINDS: dict[str | None, tuple[Load, Build]] = {}


def register(kind: str | None, load: Load, build: Build) -> None:
    if kind in _KINDS and _KINDS[kind] != (load, build):
        raise ValueError(f"cost model kind {kind!r} is registered twice")
    _KINDS[kind] = (load, build)


def _kinds() -> dict[str | None, tuple[Load, Build]]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return _KINDS


def load_profile(path) -> Any:
    """A cost profile of any registered kind, by its `kind` field; errors name the file."""
    data = read_json(path, "cost profile", ProfileError)
    kind = data.get("kind") if isinstance(data, dict) else None
    kinds = _kinds()
    if kind not in kinds:
        known = ", ".join(sorted(k for k in kinds if k is not None))
        raise ProfileError(f"{path}: unknown profile kind {kind!r}; known: {known}, or none (fitted steps)")
    return kinds[kind][0](data, str(path))


def build_cost_model(cluster: ClusterConfig, engine: EngineConfig, engine_id: str | None = None) -> CostModel:
    if cluster.cost_model == "roofline":
        return RooflineCostModel(engine.gpu, get_model(engine.model, engine.dtype), engine.tp, cluster.efficiency or None)
    profile = load_profile(cluster.cost_model)
    return _KINDS[getattr(profile, "kind", None)][1](profile, cluster, engine, engine_id, cluster.cost_model)


def _build_fitted(profile: CostProfile, cluster: ClusterConfig, engine: EngineConfig, engine_id: str | None,
                  path: str) -> CostModel:
    check_profile_matches(profile, engine, path, engine_id)  # other model/page size/TP: refused
    return FittedCostModel.from_profile(profile, path=path)


register(None, lambda data, source: CostProfile.from_dict(data, source=source), _build_fitted)
