"""Cost models by kind: how a cluster's `cost_model` setting becomes each engine's CostModel.

The setting is discriminated by `kind`; each kind has its own fields:

    cost_model: {kind: roofline}                       # datasheet peaks x fitted efficiency factors
    cost_model: {kind: roofline, path: r.json, efficiency: {gemm: 0.7}}   # factors fitted for a GPU
    cost_model: {kind: fitted, path: cpu-tiny.json}    # a linear step model fitted by calibration
    cost_model: {kind: layers, path: rtx4090.json}     # measured per-layer tables

A string is shorthand: `roofline`, or the path of a profile file, whose own `kind` field says
which model reads it (no field: a fitted step model). A new kind of cost model is one module that
defines its spec (a CostModelSpec with `kind: Literal[...]`) and calls `register`, plus its name in
BUILTIN_MODULES (imported on the first lookup, as strategies are).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from core_api.config_base import Strict
from sim.profile import CostProfile, ProfileError, read_json

if TYPE_CHECKING:
    from sim.config import ClusterConfig, EngineConfig
    from sim.cost_model import CostModel

BUILTIN_MODULES = ("sim.layer_cost_model", "sim.roofline_profile")


class CostModelSpec(Strict):
    """A cluster's `cost_model`: `kind` names a registered cost model; subclasses add its fields."""

    kind: str


class ProfileSpec(CostModelSpec):
    """A cost model read from a profile file (relative paths resolve against the config file)."""

    path: str


# build(spec, cluster, engine, engine id) -> CostModel; load(json data, source path) -> profile
Build = Callable[[Any, "ClusterConfig", "EngineConfig", "str | None"], "CostModel"]
Load = Callable[[dict, str], Any]


@dataclass(frozen=True)
class CostModelKind:
    spec: type[CostModelSpec]
    build: Build
    load: Load | None = None  # how its profile files are read (None: it has none)
    file_kind: str | None = None  # the `kind` field of its profile files


_KINDS: dict[str, CostModelKind] = {}


def register(spec: type[CostModelSpec], build: Build, load: Load | None = None, unkinded_files: bool = False) -> None:
    """Add a cost model; its kind is the default of the spec's `kind` field, and its profile files
    (if `load` reads any) carry that kind in their own `kind` field, or none with `unkinded_files`."""
    kind = spec.model_fields["kind"].default
    entry = CostModelKind(spec, build, load, None if unkinded_files or load is None else kind)
    if kind in _KINDS and _KINDS[kind] != entry:
        raise ValueError(f"cost model kind {kind!r} is registered twice")
    _KINDS[kind] = entry


def _kinds() -> dict[str, CostModelKind]:
    for module in BUILTIN_MODULES:
        importlib.import_module(module)
    return _KINDS


def _by_file_kind(file_kind: str | None, path) -> tuple[str, CostModelKind]:
    for kind, entry in _kinds().items():
        if entry.load is not None and entry.file_kind == file_kind:
            return kind, entry
    known = ", ".join(sorted(e.file_kind for e in _KINDS.values() if e.load is not None and e.file_kind))
    raise ProfileError(f"{path}: unknown profile kind {file_kind!r}; known: {known}, or none (fitted steps)")


def load_profile(path, kind: str | None = None) -> Any:
    """A cost profile of any registered kind, by its `kind` field; with `kind`, only a profile of
    that cost model. Errors name the file."""
    data = read_json(path, "cost profile", ProfileError)
    file_kind = data.get("kind") if isinstance(data, dict) else None
    found, entry = _by_file_kind(file_kind, path)
    if kind is not None and found != kind:
        raise ProfileError(f"{path}: a {found} profile, but the cost model is {kind!r}")
    return entry.load(data, str(path))


def parse_cost_model(value: Any) -> CostModelSpec:
    """The spec a `cost_model` setting means: a spec, `{kind: ..., ...}`, or the string shorthand."""
    if isinstance(value, CostModelSpec):
        return value
    if isinstance(value, str):
        if value == "roofline":
            value = {"kind": "roofline"}
        else:
            data = read_json(value, "cost profile", ProfileError)
            value = {"kind": _by_file_kind(data.get("kind") if isinstance(data, dict) else None, value)[0],
                     "path": value}
    if not isinstance(value, dict):
        raise ValueError("cost_model: 'roofline', the path of a profile, or {kind: ..., ...}")  # noqa: TRY004 (pydantic reports ValueErrors)
    kinds = _kinds()
    kind = value.get("kind")
    if kind not in kinds:
        raise ValueError(f"unknown cost model kind {kind!r}; known: {', '.join(sorted(kinds))}")
    return kinds[kind].spec.model_validate(value)


def build_cost_model(cluster: ClusterConfig, engine: EngineConfig, engine_id: str | None = None) -> CostModel:
    spec = cluster.cost_model
    return _kinds()[spec.kind].build(spec, cluster, engine, engine_id)


# -- the linear step model fitted by calibration (sim.profile.CostProfile) -----------------------
class FittedSpec(ProfileSpec):
    kind: Literal["fitted"] = "fitted"


def _build_fitted(spec: FittedSpec, cluster: ClusterConfig, engine: EngineConfig, engine_id: str | None) -> CostModel:
    from sim.cost_model import FittedCostModel
    from sim.profile_match import check_profile_matches

    profile = load_profile(spec.path, spec.kind)
    check_profile_matches(profile, engine, spec.path, engine_id)  # other model/page size/TP: refused
    return FittedCostModel.from_profile(profile, path=spec.path)


# Fitted profiles predate kinds: theirs is the file without a `kind` field.
register(FittedSpec, _build_fitted, lambda data, source: CostProfile.from_dict(data, source=source),
         unkinded_files=True)
