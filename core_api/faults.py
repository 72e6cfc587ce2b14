"""A fault schedule: what goes wrong, where and when. One file drives both backends.

    faults:
      - {at: 2.0, kind: crash, engine: e1}              # the process dies (real: SIGKILL)
      - {at: 6.0, kind: restart, engine: e1}            # a new incarnation on the same address
      - {at: 3.0, kind: stall, engine: e0, duration: 1.5}   # frozen (real: SIGSTOP .. SIGCONT)
      - {at: 4.0, kind: slow, engine: e0, duration: 2.0, factor: 3}   # steps take 3x as long
      - {at: 5.0, kind: partition, engine: e0, peer: e1, duration: 1.0}   # KV from e0 to e1 held
      - {at: 7.0, kind: link_slow, engine: e0, peer: e1, duration: 2.0, factor: 4}   # ... 4x slower

Times are seconds from the start of the run (the first arrival is at 0). The simulator applies
the schedule to its clock (sim.faults); `microserving run --faults FILE` applies the same file
to real engine processes (real.faults). Metrics of a run under faults: failures counted by
error class, goodput, and time to recover (`recovery`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core_api.types import RequestRecord

FaultKind = Literal["crash", "restart", "stall", "slow", "partition", "link_slow"]
LINK_FAULTS = ("partition", "link_slow")  # on the KV path from `engine` to `peer`


class Fault(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    at: float = Field(ge=0, description="seconds from the start of the run")
    kind: FaultKind
    engine: str
    peer: str | None = Field(None, description="link faults: the engine the KV goes to")
    duration: float | None = Field(None, gt=0, description="stall, slow and link faults: how long")
    factor: float | None = Field(None, gt=1, description="slow, link_slow: how many times longer it takes")

    @model_validator(mode="after")
    def _fields_for_kind(self) -> Fault:
        if self.kind in ("stall", "slow", *LINK_FAULTS) and self.duration is None:
            raise ValueError(f"a {self.kind} fault needs a duration")
        if self.kind in ("slow", "link_slow") and self.factor is None:
            raise ValueError(f"a {self.kind} fault needs a factor > 1")
        if (self.peer is None) == (self.kind in LINK_FAULTS):
            raise ValueError(f"a {self.kind} fault {'needs' if self.kind in LINK_FAULTS else 'takes no'} peer")
        if self.kind == "partition" and self.factor is not None:
            raise ValueError("a partition takes no factor")
        if self.kind in ("crash", "restart") and (self.duration is not None or self.factor is not None):
            raise ValueError(f"a {self.kind} fault takes no duration or factor")
        return self


class FaultSchedule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    faults: list[Fault] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _a_list_is_the_faults(cls, data):
        """`faults: [...]` in a config (or a file that is just the list) means the schedule."""
        return {"faults": data} if isinstance(data, list) else data

    @model_validator(mode="after")
    def _ordered(self) -> FaultSchedule:
        self.faults.sort(key=lambda f: f.at)
        down: dict[str, bool] = {}
        for f in self.faults:
            if f.kind == "restart" and not down.get(f.engine):
                raise ValueError(f"restart of {f.engine} at {f.at} s: it has not crashed")
            if f.kind in ("stall", "slow", "crash", *LINK_FAULTS) and down.get(f.engine):
                raise ValueError(f"{f.kind} of {f.engine} at {f.at} s: it is down (crashed, not restarted)")
            if f.kind in ("crash", "restart"):
                down[f.engine] = f.kind == "crash"
        return self

    def check_engines(self, engine_ids: Sequence[str]) -> None:
        unknown = sorted(({f.engine for f in self.faults} | {f.peer for f in self.faults if f.peer}) - set(engine_ids))
        if unknown:
            raise ValueError(f"faults name unknown engines {unknown}; engines are {sorted(engine_ids)}")


def load_faults(path: str | Path) -> FaultSchedule:
    """A YAML or JSON fault schedule; errors name the file and the field."""
    from core_api.config_file import read_config_file

    path = Path(path)
    data = read_config_file(path, "fault schedule")
    try:
        return FaultSchedule.model_validate(data)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise ValueError(f"{path}: {problems}") from None


def failures_by_kind(records: Sequence[RequestRecord]) -> dict[str, int]:
    """Failed requests counted by the error class that ended them (the reason's prefix)."""
    out: dict[str, int] = {}
    for r in records:
        if r.status != "ok":
            kind = (r.reason or "unknown").split(":", 1)[0]
            out[kind] = out.get(kind, 0) + 1
    return dict(sorted(out.items()))


def recovery(records: Sequence[RequestRecord], fault_at: float) -> float | None:
    """Seconds from a fault until the first request that arrived after it has completed: how
    long new work is not served. None if no request arrived after the fault and completed."""
    done = [r.finish_time for r in records if r.arrival_time >= fault_at and r.status == "ok"]
    return min(done) - fault_at if done else None
