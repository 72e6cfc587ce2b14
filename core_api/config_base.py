"""What every configuration model shares: strictness, the strategy section, engine ids.

The simulator's ClusterConfig and the real RealClusterConfig both list engines with an optional
`id` and a `count`, and both name a strategy; their ids must mean the same engines, because a
strategy's parameters (PD roles) name them. So both expand ids here, with one rule: `e0, e1, ...`
in list order for entries without an id; `id` itself for count 1; `id0, id1, ...` for count > 1.
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field

# Ceilings on what a config may ask for, far above any real deployment: a typo or a hostile file
# then fails naming the field instead of building millions of engines, or of KV pages (the block
# manager keeps about 60 bytes per page; real engines hold 10^4-10^6 pages).
MAX_ENGINES = 4096  # in one cluster
MAX_PAGES = 1 << 24  # KV pages of one engine
MAX_GPUS_PER_ENGINE = 1024  # its tensor (or pipeline) parallel degree


class Strict(BaseModel):
    """A config model that refuses unknown fields: a misspelt key is an error, never ignored."""

    model_config = ConfigDict(extra="forbid")


class StrategyConfig(Strict):
    """The strategy section of a cluster: a registered name (or module:Class) and its params."""

    name: str = "round_robin"
    params: dict[str, Any] = Field(default_factory=dict)


class EngineEntryLike(Protocol):
    id: str | None
    count: int


def expand_engine_ids(entries: Iterable[EngineEntryLike]) -> list[str]:
    """One id per engine, `count` unrolled (the rule in the module docstring)."""
    entries = list(entries)
    total = sum(e.count for e in entries)
    if total > MAX_ENGINES:
        raise ValueError(f"{total} engines in one cluster; at most {MAX_ENGINES}")
    ids: list[str] = []
    for e in entries:
        for k in range(e.count):
            if e.id is None:
                ids.append(f"e{len(ids)}")
            else:
                ids.append(e.id if e.count == 1 else f"{e.id}{k}")
    return ids


def check_unique(ids: list[str]) -> None:
    seen: set[str] = set()
    repeated: set[str] = set()
    for i in ids:
        (repeated if i in seen else seen).add(i)
    dupes = sorted(repeated)
    if dupes:
        raise ValueError(f"engine ids must be unique, repeated: {dupes}")
