"""A sweep file (YAML/JSON, pydantic) and its expansion into independent runs.

A sweep is a base SimConfig and a cartesian product over clusters x strategies x workloads x
rates x seeds. A cluster variant may bring its own strategy list (PD roles name engines, so
strategies often belong to one cluster shape); a strategy's ``grid`` expands into one variant
per combination of values. Each point becomes a RunSpec: fully resolved, JSON-able (it is what
a worker process receives), with a key that is a hash of everything that affects its result,
so ``--resume`` can tell finished runs apart from labels alone.
"""
from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from core_api.config_base import Strict
from core_api.metrics import SLO_KEYS
from core_api.traces import TraceSpec
from core_api.workload import WorkloadSpec
from sim.config import ClusterConfig, SimConfig, StrategyConfig


class StrategyVariant(Strict):
    """A strategy with fixed ``params``; each combination of ``grid`` values adds one variant."""

    name: str
    label: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    grid: dict[str, list[Any]] = Field(default_factory=dict)

    def expand(self) -> list[tuple[str, StrategyConfig]]:
        keys = list(self.grid)
        out = []
        for values in itertools.product(*(self.grid[k] for k in keys)):
            params = {**self.params, **dict(zip(keys, values))}
            suffix = ",".join(f"{k}={v}" for k, v in zip(keys, values))
            label = self.label or self.name
            out.append((f"{label}[{suffix}]" if suffix else label, StrategyConfig(name=self.name, params=params)))
        return out


class ClusterVariant(Strict):
    """``set`` is deep-merged into the base cluster (lists, e.g. ``engines``, replace whole)."""

    label: str
    set: dict[str, Any] = Field(default_factory=dict)
    strategies: list[StrategyVariant] | None = None  # replaces the sweep-level list for this cluster


class WorkloadVariant(Strict):
    """A synthetic workload (``set`` merged into the base WorkloadSpec) or a trace file."""

    label: str
    set: dict[str, Any] = Field(default_factory=dict)
    trace: TraceSpec | None = None
    rates: list[float] | None = None  # replaces the sweep-level rates (workloads saturate differently)

    @model_validator(mode="after")
    def _one(self) -> WorkloadVariant:
        if self.trace is not None and self.set:
            raise ValueError(f"workload {self.label!r}: give either 'set' (synthetic) or 'trace', not both")
        return self


class SweepSpec(Strict):
    """What to sweep; empty lists mean 'the base config's own value'."""

    name: str = "sweep"
    base: SimConfig
    clusters: list[ClusterVariant] = Field(default_factory=list)
    strategies: list[StrategyVariant] = Field(default_factory=list)
    workloads: list[WorkloadVariant] = Field(default_factory=list)
    rates: list[float] = Field(default_factory=list)
    seeds: list[int] = Field(default_factory=lambda: [0])
    warmup_requests: int = Field(0, ge=0)  # the first n arrivals run but are left out of metrics
    slos: dict[str, float] = Field(default_factory=dict)  # ttft_ms / tpot_ms / e2el_ms
    percentiles: list[float] = Field(default_factory=lambda: [50.0, 90.0, 99.0])
    save_samples: bool = True  # per-request ttft/tpot/e2el in each result line (for CDF plots)

    @model_validator(mode="after")
    def _check(self) -> SweepSpec:
        bad = sorted(set(self.slos) - set(SLO_KEYS))
        if bad:
            raise ValueError(f"unknown SLO keys {bad}; known: {list(SLO_KEYS)}")
        for rates in [self.rates] + [w.rates or [] for w in self.workloads]:
            if any(r <= 0 for r in rates):
                raise ValueError(f"rates must be > 0, got {rates}")
        return self

    def runs(self) -> list[RunSpec]:
        """Every point of the product, in a stable order."""
        base = self.base.model_dump(mode="json")
        clusters = self.clusters or [ClusterVariant(label="base")]
        workloads = self.workloads or [WorkloadVariant(label=self.base.workload.name)]
        out = []
        for cv in clusters:
            cluster = deep_merge(base["cluster"], cv.set)
            variants = cv.strategies if cv.strategies is not None else self.strategies
            strategies = [s for v in variants for s in v.expand()] or \
                [(self.base.cluster.strategy.name, self.base.cluster.strategy)]
            points = [(s, wv, rate, seed) for s in strategies for wv in workloads
                      for rate in (wv.rates if wv.rates is not None else self.rates) or [None]
                      for seed in self.seeds]
            for (s_label, strat), wv, rate, seed in points:
                c = ClusterConfig.model_validate({**cluster, "strategy": strat.model_dump(mode="json")})
                workload, trace = None, None
                if wv.trace is not None:
                    opts = {"seed": seed} | ({"rate": rate} if rate is not None else {})
                    trace = wv.trace.model_copy(update={"options": wv.trace.options.model_copy(update=opts)})
                    trace = TraceSpec.model_validate(trace.model_dump())
                else:
                    w = deep_merge(base["workload"], wv.set) | {"seed": seed}
                    if rate is not None:
                        w["arrival"] = {**w.get("arrival", {}), "rate": rate}
                    workload = WorkloadSpec.model_validate(w)
                shown_rate = rate if rate is not None else (workload.arrival.rate if workload else None)
                labels = {"cluster": cv.label, "strategy": s_label, "workload": wv.label,
                          "rate": shown_rate, "seed": seed}
                out.append(RunSpec(labels=labels, cluster=c, workload=workload, trace=trace, seed=seed,
                                   warmup_requests=self.warmup_requests, slos=self.slos,
                                   percentiles=self.percentiles, save_samples=self.save_samples))
        check_strategies(out)
        return out


def check_strategies(runs: list[RunSpec]) -> None:
    """Every strategy name and its parameters resolve, before any run starts: a typo would
    otherwise be found only after every run of it had failed."""
    from pydantic import ValidationError

    from core_api.strategy import StrategyError, resolve

    problems: dict[str, str] = {}
    for run in runs:
        s = run.cluster.strategy
        key = f"{s.name} {json.dumps(s.params, sort_keys=True)}"
        if key in problems:
            continue
        try:
            resolve(s.name).Params(**s.params)
            problems[key] = ""
        except (StrategyError, ValidationError, TypeError) as exc:
            from core_api.validation_errors import error_text

            problems[key] = f"strategy {s.name} ({run.labels.get('strategy')}): {error_text(exc)}"
    bad = [p for p in problems.values() if p]
    if bad:
        raise ValueError("; ".join(bad))


class RunSpec(Strict):
    """One simulation, fully resolved; the only thing that crosses into a worker process."""

    labels: dict[str, Any]
    cluster: ClusterConfig
    workload: WorkloadSpec | None = None
    trace: TraceSpec | None = None
    seed: int = 0
    warmup_requests: int = 0
    slos: dict[str, float] = Field(default_factory=dict)
    percentiles: list[float] = Field(default_factory=lambda: [50.0, 90.0, 99.0])
    save_samples: bool = True

    @model_validator(mode="after")
    def _one_workload(self) -> RunSpec:
        if (self.workload is None) == (self.trace is None):
            raise ValueError("a run needs exactly one of 'workload' and 'trace'")
        return self

    def config(self) -> dict:
        """What determines the result (labels excluded: renaming a variant reruns nothing)."""
        return self.model_dump(mode="json", exclude={"labels"})

    @property
    def key(self) -> str:
        """Hash of the config and of the files it names (profiles, traces): a profile refitted in
        place must make `--resume` rerun its runs, not keep results priced by the old one."""
        config = self.config()
        inputs = {path: _file_digest(path) for path in sorted(_named_files(config))}
        text = json.dumps({"config": config, "inputs": inputs} if inputs else config, sort_keys=True,
                          separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _named_files(config: Any) -> set[str]:
    """Every `path` in a config (a profile's, a trace's) that names an existing file."""
    found: set[str] = set()
    if isinstance(config, dict):
        path = config.get("path")
        if isinstance(path, str) and Path(path).is_file():
            found.add(path)
        for value in config.values():
            found |= _named_files(value)
    elif isinstance(config, list):
        for value in config:
            found |= _named_files(value)
    return found


_digests: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> sha256: a sweep hashes each file once


def _file_digest(path: str) -> str:
    stat = Path(path).stat()
    cache_key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if cache_key not in _digests:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _digests[cache_key] = digest.hexdigest()
    return _digests[cache_key]


def deep_merge(base: dict, over: dict) -> dict:
    """A copy of `base` with `over` merged in: dicts recursively, anything else replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_spec(path: str | Path) -> SweepSpec:
    """Read a YAML or JSON sweep file; validation errors name the bad field."""
    from core_api.config_file import read_config_file

    path = Path(path)
    data = read_config_file(path, "sweep spec")
    # Relative trace paths are relative to the sweep file, so a spec can ship next to its data.
    for w in (data.get("workloads") or []) if isinstance(data, dict) else []:
        trace = w.get("trace") if isinstance(w, dict) else None
        if isinstance(trace, dict) and isinstance(trace.get("path"), str) and not Path(trace["path"]).is_absolute():
            trace["path"] = str((path.parent / trace["path"]).resolve())
    return SweepSpec.model_validate(data)
