"""RealCluster: launch and supervise engine processes, and run a workload through a strategy.

Engines are spawned on this host (fresh interpreters running real.engine_process, spec as JSON) or
named by the address of an engine started elsewhere (`microserving engine --listen ...`). A run
opens a session of RealEngine clients sharing one directory (so remote_send can name its peer),
builds the strategy by name on an AsyncioRuntime, replays the workload's arrival times and
records every request exactly like sim.cluster does, so metrics and RunResult JSON compare
one to one with the simulator.

Supervision: a watchdog checks local processes every 100 ms; when one dies its client fails all
pending calls at once and the other engines are told (`peer_down`) to drop transfers to it.
Shutdown (close, context exit, Ctrl-C, interpreter exit) terminates every process this object
started, escalating to SIGKILL, and unlinks their shared KV pool files: no orphans.
"""
from __future__ import annotations

import asyncio
import atexit
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from typing_extensions import Self

from core_api import strategy as registry
from core_api.driver import serve_request
from core_api.errors import EngineCallError
from core_api.kv_cache import KVLeakError
from core_api.metrics import summarize
from core_api.types import RequestRecord
from core_api.workload import Workload
from real.client import RealEngine
from real.config import EngineSpec, RealClusterConfig, StrategyConfig
from real.keys import ROUTER, EphemeralKeys, load_keys
from real.pacer import paced
from real.pool_files import unlink_pool
from real.runtime import AsyncioRuntime

WATCHDOG_S = 0.1


@dataclass
class RealRunResult:
    """One real run; `to_dict()` has sim RunResult's keys where they mean the same thing."""

    config: dict
    seed: int
    strategy: dict
    records: list[RequestRecord]
    engine_stats: dict[str, dict]
    wall_time_s: float
    spawn_errors: list[str] = field(default_factory=list)

    def metrics(self, slos: dict | None = None) -> dict[str, float]:
        return summarize(self.records, slos=slos)

    def to_dict(self) -> dict[str, Any]:
        return {"backend": "real", "config": self.config, "seed": self.seed, "strategy": self.strategy,
                "wall_time_s": self.wall_time_s, "metrics": self.metrics(), "engine_stats": self.engine_stats,
                "records": [r.to_dict(token_ids=True) for r in self.records]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=True)


class RealCluster:
    def __init__(self, config: RealClusterConfig,
                 on_ready: Callable[[str, str, float], None] | None = None) -> None:
        self.config = config
        # Told (engine id, address, seconds since start) as each engine started here is ready:
        # a large model takes many seconds to load, and a command should not sit silent.
        self.on_ready = on_ready
        self.specs = config.engine_specs()
        self.addresses: dict[str, str] = {eid: addr for _, addr, eid in self.specs if addr is not None}
        # A remote engine listed without an id keeps the id it was started with (learnt at hello).
        self._expected = {eid: None if e.address is not None and e.id is None else eid
                          for eid, e in config.expanded()}
        self.procs: dict[str, subprocess.Popen] = {}
        self._launched: dict[str, Any] = {}  # the spec each local engine was started with (for restarts)
        self.shm_files: dict[str, str] = {}
        # The router's CURVE keys: the configured directory's, or made here for the engines started
        # here (`ephemeral`, on disk only while they start).
        self.router_keys = load_keys(config.keys, ROUTER) if config.keys and config.auth else None
        self.ephemeral: EphemeralKeys | None = None
        self._started = False

    @classmethod
    def local(cls, n: int = 2, strategy: str = "round_robin", params: dict | None = None, **spec: Any) -> RealCluster:
        """n identical engines on this host; `spec` holds EngineSpec fields (model, num_pages, ...)."""
        return cls(RealClusterConfig(engines=[{"count": n, **spec}],
                                     strategy=StrategyConfig(name=strategy, params=params or {})))

    @property
    def engine_ids(self) -> list[str]:
        return [eid for _, _, eid in self.specs]

    # -- processes --------------------------------------------------------------------------
    def start(self) -> RealCluster:
        if self._started:
            return self
        self._started = True
        atexit.register(self.close)
        local = [(s, eid) for s, _, eid in self.specs if s is not None]
        nccl_port = _free_port() if any(s.transport == "nccl" for s, _ in local) else None
        pipes = {}
        try:
            if local and self.config.auth and self.config.keys is None:
                self.ephemeral = EphemeralKeys()
            with self._key_directory() as keys:
                for rank, (spec, eid) in enumerate(local):
                    spec = spec.model_copy(update={"exit_with_parent": True})
                    if nccl_port is not None:
                        spec = spec.model_copy(update={"nccl_init": f"tcp://127.0.0.1:{nccl_port}",
                                                       "nccl_rank": rank, "nccl_world": len(local)})
                    self._launched[eid] = spec
                    pipes[eid] = self._spawn(eid, self._with_keys(spec, keys))
                t0 = time.monotonic()
                deadline = t0 + self.config.start_timeout_s
                for eid, pipe in pipes.items():
                    report = self._ready_report(eid, pipe, deadline)
                    self.addresses[eid] = report["address"]
                    if self.on_ready is not None:
                        self.on_ready(eid, report["address"], time.monotonic() - t0)
                    if report.get("shm"):
                        self.shm_files[eid] = report["shm"]
        except BaseException:
            self.close()
            raise
        finally:
            for pipe in pipes.values():
                pipe.close()
        return self

    @contextmanager
    def _key_directory(self):
        """The key directory engines started now read (None: no CURVE); an ephemeral one exists
        only for the block."""
        if not self.config.auth:
            yield None
        elif self.ephemeral is not None:
            with self.ephemeral.directory() as path:
                yield path
        else:
            yield self.config.keys

    @staticmethod
    def _with_keys(spec: EngineSpec, keys: str | None) -> EngineSpec:
        return spec.model_copy(update={"keys": keys}) if keys is not None and spec.keys is None else spec

    def _spawn(self, eid: str, spec) -> Any:
        """Start one engine process; returns the pipe its ready report comes on."""
        r, w = os.pipe()
        self.procs[eid] = subprocess.Popen(
            [sys.executable, "-m", "real.engine_process", "--spec", spec.model_dump_json(), "--ready-fd", str(w)],
            pass_fds=(w,))  # the installed package: no PYTHONPATH games
        os.close(w)
        return os.fdopen(r)

    def restart(self, engine_id: str) -> None:
        """Start a dead local engine again on its old address (fault injection: the restart after a
        crash); the router's client takes it back as a new incarnation when it answers."""
        proc = self.procs[engine_id]
        if proc.poll() is None:
            raise RuntimeError(f"engine {engine_id} is still running")
        spec = self._launched[engine_id].model_copy(update={"listen": self.addresses[engine_id]})
        old_pool = self.shm_files.pop(engine_id, None)
        if old_pool:
            unlink_pool(old_pool)
        with self._key_directory() as keys, self._spawn(engine_id, self._with_keys(spec, keys)) as pipe:
            report = self._ready_report(engine_id, pipe, time.monotonic() + self.config.start_timeout_s)
        if report.get("shm"):
            self.shm_files[engine_id] = report["shm"]

    def _ready_report(self, eid: str, pipe, deadline: float) -> dict:
        ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise RuntimeError(f"engine {eid} did not start within {self.config.start_timeout_s:g} s")
        line = pipe.readline()
        if not line:
            code = self.procs[eid].wait(5.0)
            raise RuntimeError(f"engine {eid} exited during startup (code {code})")
        report = json.loads(line)
        if "error" in report:
            raise RuntimeError(f"engine {eid} failed to start: {report['error']}\n{report.get('traceback', '')}")
        return report

    def close(self) -> None:
        """Stop every engine this cluster started (SIGTERM, then SIGKILL) and remove their pool files."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + 5.0
        for proc in self.procs.values():
            try:
                proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2.0)
        for path in self.shm_files.values():
            unlink_pool(path)
        self.shm_files.clear()
        atexit.unregister(self.close)

    def kill(self, engine_id: str) -> None:
        """SIGKILL one engine (fault injection)."""
        self.procs[engine_id].kill()
        self.procs[engine_id].wait(5.0)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def heartbeat_timeout_for(self, engine_id: str) -> float:
        """Silence after which the router declares an engine dead: shorter for engines reached by
        address, whose death no process watchdog sees."""
        launched = any(eid == engine_id and spec is not None for spec, _, eid in self.specs)
        return self.config.heartbeat_timeout_s if launched else self.config.remote_heartbeat_timeout_s

    # -- sessions -----------------------------------------------------------------------------
    @asynccontextmanager
    async def session(self):
        """Connected RealEngines by id (in config order), supervised while the session is open."""
        self.start()
        directory: dict[str, RealEngine] = {}
        cfg = self.config
        slots = {eid: RealEngine(self.addresses[eid], self._expected[eid], directory, cfg.heartbeat_s,
                                 self.heartbeat_timeout_for(eid), keys=self._router_keys(eid))
                 for eid in self.engine_ids}
        try:
            await asyncio.gather(*(e.connect(cfg.start_timeout_s) for e in slots.values()))
            for e in slots.values():
                if e.id in directory:
                    raise ValueError(f"two engines call themselves {e.id!r} ({directory[e.id].address}, {e.address})")
                directory[e.id] = e
            watchdog = asyncio.ensure_future(self._watchdog(slots))
            try:
                yield directory
            finally:
                watchdog.cancel()
                await asyncio.gather(watchdog, return_exceptions=True)
        finally:
            await asyncio.gather(*(e.close() for e in slots.values()), return_exceptions=True)

    def _router_keys(self, engine_id: str):
        """The router's CURVE keys toward one engine: the configured ones, or those made here for the
        engines started here (an engine reached by address cannot hold those: it gets none)."""
        if self.router_keys is not None:
            return self.router_keys
        if self.ephemeral is not None and engine_id in self.procs:
            return self.ephemeral.router
        return None

    async def _watchdog(self, engines: dict[str, RealEngine]) -> None:
        while True:
            await asyncio.sleep(WATCHDOG_S)
            for eid, proc in self.procs.items():
                engine = engines[eid]
                if engine.down is None and proc.poll() is not None:
                    engine.mark_dead(f"process {proc.pid} exited with code {proc.returncode}")
            for engine in engines.values():
                if engine.down is not None and not getattr(engine, "_announced", False):
                    engine._announced = True
                    await self._announce_down(engine, engines)

    @staticmethod
    async def _announce_down(dead: RealEngine, engines: dict[str, RealEngine]) -> None:
        live = [e for e in engines.values() if e.down is None]
        await asyncio.gather(*(e.peer_down(dead.id, dead.address) for e in live), return_exceptions=True)

    # -- runs -----------------------------------------------------------------------------------
    def run(self, workload: Workload, strategy: str | None = None, params: dict | None = None, seed: int = 0,
            config_echo: dict | None = None) -> RealRunResult:
        return asyncio.run(self.arun(workload, strategy, params, seed, config_echo))

    async def arun(self, workload: Workload, strategy: str | None = None, params: dict | None = None,
                   seed: int = 0, config_echo: dict | None = None) -> RealRunResult:
        name = strategy or self.config.strategy.name
        params = params if params is not None else (self.config.strategy.params if strategy is None else {})
        async with self.session() as engines:
            return await run_workload(list(engines.values()), workload, name, params, seed,
                                      config_echo if config_echo is not None else self.config.model_dump(mode="json"))


async def run_workload(engines: list[RealEngine], workload: Workload, name: str, params: dict, seed: int = 0,
                       config_echo: dict | None = None) -> RealRunResult:
    """Serve a workload through strategy `name` on connected engines, at its arrival times."""
    runtime = AsyncioRuntime()
    origin = time.monotonic() - runtime.now()
    for e in engines:
        e.time_origin = origin
    strat = registry.build(name, engines, runtime, params)
    wall0 = time.perf_counter()
    requests = list(workload)
    records = [RequestRecord(r.id, r.arrival_time, r.prompt_len, r.sampling.max_tokens) for r in requests]
    tasks = []

    def start(i: int) -> None:
        tasks.append(asyncio.ensure_future(serve_request(strat, engines, requests[i], records[i], runtime)))

    await paced([r.arrival_time for r in requests], origin, start)  # on time, where asyncio.sleep is ~0.5 ms late
    await asyncio.gather(*tasks)
    await runtime.drain()
    stats = await engine_stats(engines)
    return RealRunResult(config=config_echo or {}, seed=seed, strategy={"name": name, "params": params},
                         records=records, engine_stats=stats, wall_time_s=time.perf_counter() - wall0,
                         spawn_errors=[repr(e) for e in runtime.spawn_errors])


async def engine_stats(engines: list[RealEngine]) -> dict[str, dict]:
    """Stats of every engine still up (a dead one reports why)."""
    out = {}
    results = await asyncio.gather(*(e.stats() for e in engines if e.down is None), return_exceptions=True)
    for e, r in zip([e for e in engines if e.down is None], results):
        out[e.id] = r if isinstance(r, dict) else {"error": str(r)}
    for e in engines:
        if e.down is not None:
            out[e.id] = {"down": e.down}
    return out


async def check_no_leaks(engines: list[RealEngine], settle_s: float = 2.0) -> dict[str, dict]:
    """Raise KVLeakError unless every live engine is idle with no used or reserved page. Waits up
    to `settle_s` for work still draining (a release in flight) before judging."""
    deadline = time.monotonic() + settle_s
    while True:
        stats = await engine_stats(engines)
        live = {k: s for k, s in stats.items() if "down" not in s}
        bad = {k: s for k, s in live.items() if "error" in s or not s["idle"] or s["leak"]
               or s["pages"]["used"] or s["pages"]["reserved"]}
        if not bad:
            return stats
        if time.monotonic() > deadline:
            raise KVLeakError("; ".join(f"{k}: leak={s.get('leak')} pages={s.get('pages')} running={s.get('running')} "
                                        f"waiting={s.get('waiting')} receiving={s.get('receiving')} "
                                        f"sending={s.get('sending')} {s.get('error', '')}" for k, s in bad.items()))
        await asyncio.sleep(0.05)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


__all__ = ["EngineCallError", "EngineSpec", "RealCluster", "RealRunResult", "check_no_leaks", "run_workload"]
