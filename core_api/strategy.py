"""Strategy base class and the name registry.

A strategy turns one user request into sub-request calls on engines. Subclasses implement
`async def generate(self, req)` as an async generator of TokenChunks, written only against the
Engine protocol and `self.runtime` (gather, sleep, now, spawn), so the same object runs on the
simulator and on real engines. Parameters are a pydantic model validated at construction, and
`validate()` checks them against the engines, so a bad role or ratio fails before any request.
"""
from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Sequence
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from core_api.engine import Engine
from core_api.errors import EngineCallError, EngineDown
from core_api.runtime import Runtime
from core_api.types import Request, TokenChunk
from core_api.validation_errors import format_validation_error

BUILTIN_PACKAGE = "strategies"  # imported on first lookup so built-in names register themselves


class StrategyError(ValueError):
    """A strategy cannot be built: unknown name, bad parameters, or roles that do not fit."""


class NoParams(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Strategy:
    name: ClassVar[str] = ""
    Params: ClassVar[type[BaseModel]] = NoParams

    def __init__(self, engines: Sequence[Engine], runtime: Runtime, **params: Any) -> None:
        if not engines:
            raise StrategyError(f"strategy {self.name!r} needs at least one engine")
        self.engines = list(engines)
        self.by_id = {e.id: e for e in self.engines}
        if len(self.by_id) != len(self.engines):
            raise StrategyError("engine ids must be unique")
        self.runtime = runtime
        try:
            self.params = self.Params(**params)
        except ValidationError as exc:
            raise StrategyError(f"strategy {self.name!r}: bad parameters: {format_validation_error(exc)}") from None
        self._tags: dict[str, dict] = {}
        self.validate()

    def validate(self) -> None:
        """Check parameters against the engines; raise StrategyError. Override as needed."""

    def generate(self, req: Request) -> AsyncIterator[TokenChunk]:
        raise NotImplementedError

    # -- helpers for subclasses -----------------------------------------------------------
    def engine(self, engine_id: str) -> Engine:
        try:
            return self.by_id[engine_id]
        except KeyError:
            raise StrategyError(
                f"strategy {self.name!r}: no engine {engine_id!r}; engines are {sorted(self.by_id)}"
            ) from None

    def engines_named(self, ids: Sequence[str], role: str) -> list[Engine]:
        if not ids:
            raise StrategyError(f"strategy {self.name!r}: the {role} set is empty")
        return [self.engine(i) for i in ids]

    def live(self, engines: Sequence[Engine] | None = None) -> list[Engine]:
        """The engines (default: all of the strategy's) that accept calls now. Raises EngineDown
        when none does, so a request fails with the reason instead of waiting on a dead engine."""
        pool = self.engines if engines is None else engines
        up = [e for e in pool if e.healthy]
        if not up:
            raise EngineDown(f"no live engine among {[e.id for e in pool]}")
        return up

    async def stream_with_retry(self, req: Request, pick):
        """start_generate on `pick(live engines not tried yet)`; if that engine goes down before
        the first token, the request is retried on another (no token was seen, so nothing is
        repeated). Tags the request with its `engine` (and `retried_from`, the engines that failed)."""
        tried: list[str] = []
        while True:
            engine = pick([e for e in self.live() if e.id not in tried] or self.live())
            tried.append(engine.id)
            self.tag(req, engine=engine.id, **({"retried_from": tried[:-1]} if len(tried) > 1 else {}))
            started = False
            try:
                async for chunk in engine.start_generate(req):
                    started = True
                    yield chunk
                return
            except EngineDown:
                if started or len(tried) >= len(self.engines):
                    raise
                try:
                    await engine.release(req.id)  # in case it is back already; a dead one holds nothing
                except EngineCallError:
                    pass

    def tag(self, req: Request, **info: Any) -> None:
        """Note how a request was routed; the run's RequestRecord carries it as `tags`."""
        self._tags.setdefault(req.id, {}).update(info)

    def pop_tags(self, req_id: str) -> dict:
        return self._tags.pop(req_id, {})


_REGISTRY: dict[str, type[Strategy]] = {}


def register(name: str):
    """Class decorator: make a strategy selectable by name."""

    def deco(cls: type[Strategy]) -> type[Strategy]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise StrategyError(f"strategy name {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def known_strategies() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def resolve(name: str) -> type[Strategy]:
    """A registered name, or 'package.module:ClassName' for a user strategy."""
    if ":" in name:
        module_name, _, attr = name.partition(":")
        try:
            cls = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise StrategyError(f"cannot load strategy {name!r}: {exc}") from None
        if not (isinstance(cls, type) and issubclass(cls, Strategy)):
            raise StrategyError(f"{name!r} is not a Strategy subclass")
        cls.name = cls.name or name
        return cls
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise StrategyError(f"unknown strategy {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def build(name: str, engines: Sequence[Engine], runtime: Runtime, params: dict | None = None) -> Strategy:
    return resolve(name)(engines, runtime, **(params or {}))


def params_from_cli(items: Sequence[str], flag: str = "--param") -> dict[str, Any]:
    """`KEY=VALUE` command-line items -> a dict (strategy params, engine options); VALUE is JSON
    when it parses, else text. `flag` names the option in errors."""
    import json

    params: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            params[key] = json.loads(value)
        except json.JSONDecodeError:
            params[key] = value
    return params


def _load_builtins() -> None:
    importlib.import_module(BUILTIN_PACKAGE)
