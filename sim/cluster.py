"""Build a simulated cluster from a ClusterConfig and run a workload through a strategy."""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import simpy

from core_api import strategy as strategy_registry
from core_api.config_base import MAX_PAGES
from core_api.driver import serve_request
from core_api.engine_stats import common_engine_stats
from core_api.faults import FaultSchedule, failures_by_kind
from core_api.itl_histogram import ItlHistogram
from core_api.metrics import summarize
from core_api.scheduler import SchedulerConfig
from core_api.types import Request, RequestRecord
from core_api.workload import Workload
from sim.config import ClusterConfig, EngineConfig
from sim.cost_models import build_cost_model
from sim.engine import SimEngine
from sim.hardware import get_gpu, kv_bytes_per_token, kv_pages_for
from sim.network import LinkSpec, Network
from sim.runtime import SimRuntime

DEFAULT_LINK_LATENCY_S = 5e-6


@dataclass
class RunResult:
    """What one simulation produced. `to_json()` is byte-identical for the same config and seed."""

    config: dict
    seed: int
    cost_models: dict[str, dict]
    records: list[RequestRecord]
    engine_stats: dict[str, dict]
    network_stats: dict[str, dict]
    sim_time_s: float
    wall_time_s: float = field(default=0.0, compare=False)  # not in the JSON: it varies run to run
    # Set when the records dropped their token times (token_times=False): the ok requests' gaps.
    itl: ItlHistogram | None = field(default=None, compare=False)
    _metrics: dict | None = field(default=None, init=False, repr=False, compare=False)

    def metrics(self, slos: dict | None = None) -> dict[str, float]:
        """summarize() of the records; without SLOs computed once (printed and written alike)."""
        if slos:
            return summarize(self.records, slos=slos, itl=self.itl)
        if self._metrics is None:
            self._metrics = summarize(self.records, itl=self.itl)
        return dict(self._metrics)

    def failed_by_reason(self) -> dict[str, int]:
        return failures_by_kind(self.records)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config,
            "seed": self.seed,
            "cost_models": self.cost_models,
            "sim_time_s": self.sim_time_s,
            "metrics": self.metrics(),
            "failed_by_reason": self.failed_by_reason(),
            "engine_stats": self.engine_stats,
            "network_stats": self.network_stats,
            "records": [r.to_dict() for r in self.records],
        }

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), sort_keys=True, allow_nan=True)


class SimCluster:
    """Engines, links and a strategy on one SimPy environment. One instance runs one workload."""

    def __init__(self, cluster: ClusterConfig, strategy: strategy_registry.Strategy | None = None) -> None:
        if cluster.measured_host:
            from sim.measured_host import with_measured_host

            cluster = with_measured_host(cluster)
        self.config = cluster
        self.env = simpy.Environment()
        self.runtime = SimRuntime(self.env)
        self.network = Network(self.env, cluster.link or self._default_link(cluster),
                               {(o.src, o.dst): LinkSpec(latency_s=o.latency_s, bandwidth_Bps=o.bandwidth_Bps)
                                for o in cluster.links})
        self.engines: dict[str, SimEngine] = {}
        self.cost_models: dict[str, dict] = {}
        for engine_id, ec in cluster.expanded():
            cost = build_cost_model(cluster, ec, engine_id)
            self.cost_models[engine_id] = cost.describe()
            self.engines[engine_id] = SimEngine(
                self.env, engine_id, self._scheduler_config(ec), cost, self.network,
                kv_bytes_per_token(ec.model_spec()), self.engines,
                rpc_latency_s=cluster.rpc_latency_s, send_overhead_s=cluster.send_overhead_s,
                recv_overhead_s=cluster.recv_overhead_s, generate_overhead_s=cluster.generate_overhead_s,
                handoff_generate_overhead_s=cluster.handoff_generate_overhead_s,
                calls_between_steps=cluster.calls_between_steps, router_cpu_per_token_s=cluster.router_cpu_per_token_s,
                stream_cost=cluster.stream, idle_cost=cluster.idle,
            )
        unknown = {o.src for o in cluster.links} | {o.dst for o in cluster.links}
        unknown -= set(self.engines)
        if unknown:
            raise ValueError(f"links name unknown engines {sorted(unknown)}; engines are {sorted(self.engines)}")
        self.strategy = strategy or strategy_registry.build(
            cluster.strategy.name, list(self.engines.values()), self.runtime, cluster.strategy.params
        )

    @staticmethod
    def _default_link(cluster: ClusterConfig) -> LinkSpec:
        first = cluster.engines[0]
        gpu = get_gpu(first.gpu)
        return LinkSpec(latency_s=DEFAULT_LINK_LATENCY_S, bandwidth_Bps=gpu.nvlink_bandwidth_Bps * first.tp)

    @staticmethod
    def _scheduler_config(ec: EngineConfig) -> SchedulerConfig:
        num_pages = ec.num_pages
        if num_pages is None:
            num_pages = kv_pages_for(get_gpu(ec.gpu), ec.model_spec(), ec.tp, ec.page_size, ec.mem_util)
            if num_pages > MAX_PAGES:
                raise ValueError(f"{num_pages} KV pages of {ec.page_size} tokens fit in the GPU memory, more than "
                                 f"an engine may hold ({MAX_PAGES}): set num_pages, or a larger page_size")
        return ec.scheduler_config(num_pages)

    def run(self, workload: Workload, seed: int = 0, config_echo: dict | None = None,
            faults: FaultSchedule | None = None, token_times: bool = True,
            progress: Callable[[int, int, float], None] | None = None) -> RunResult:
        """Simulate the workload. token_times=False: each finished request's record keeps its
        token count and first and last token time, its gaps go to one ITL histogram
        (RunResult.itl), and every token's time is let go: what a run of millions needs.
        `progress(done, total, simulated_s)` is called each time another tenth of the requests
        has ended."""
        wall0 = time.perf_counter()
        self._itl = None if token_times else ItlHistogram()
        self._progress, self._total = progress, len(workload)
        records: list[RequestRecord] = []  # in arrival order, each made as its request arrives
        self.env.process(self._arrivals(workload, records))
        if faults is not None and faults.faults:
            faults.check_engines(list(self.engines))
            self.env.process(self._faults(faults))
        self._open, self._all_done = len(workload), self.env.event()
        try:
            # Until the last request ends: a timer left behind (a released reservation's expiry)
            # must not carry the clock on. With events left but requests open, that is a stall.
            self.env.run(until=self._all_done) if self._open else None
        except RuntimeError:
            if self.env.peek() != float("inf"):
                raise  # not SimPy's "no events left": a real error in a process
            # no event left while requests are open: _fail_stalled says so
        self._fail_stalled(records)
        return RunResult(
            config=config_echo if config_echo is not None else self.config.model_dump(mode="json"),
            seed=seed,
            cost_models=self.cost_models,
            records=records,
            engine_stats={eid: self._engine_stats(e) for eid, e in self.engines.items()},
            network_stats=self.network.stats(),
            sim_time_s=self.env.now,
            wall_time_s=time.perf_counter() - wall0,
            itl=self._itl,
        )

    def _arrivals(self, workload: Workload, records: list[RequestRecord]):
        """Each request in arrival order at its time. A lazy workload is built as this goes, and a
        served request is dropped, so only the requests in flight hold their prompts."""
        env, process = self.env, self.runtime.process
        for req in workload:
            if req.arrival_time > env.now:
                yield env.timeout(req.arrival_time - env.now)
            record = RequestRecord(req.id, req.arrival_time, req.prompt_len, req.sampling.max_tokens)
            records.append(record)
            process(self._serve(req, record))

    def _faults(self, schedule: FaultSchedule):
        """Apply a fault schedule to the engines on the simulated clock (sim.engine_faults)."""
        env = self.env
        for fault in schedule.faults:
            if fault.at > env.now:
                yield env.timeout(fault.at - env.now)
            engine = self.engines[fault.engine]
            if fault.kind == "crash":
                engine.crash(detect_s=self.config.crash_detect_s)
            elif fault.kind == "restart":
                engine.restart()
            elif fault.kind == "stall":
                engine.stall(fault.duration, self.config.heartbeat_timeout_s)
            elif fault.kind == "slow":
                engine.slow(fault.factor, fault.duration)
            else:  # a link fault on the KV path engine -> peer
                self.network.degrade(fault.engine, fault.peer, fault.duration, fault.factor)

    def _fail_stalled(self, records: list[RequestRecord]) -> None:
        """Requests still open when no event is left can never finish: say so, never report them ok."""
        for record in records:
            if record.finish_time is None:
                record.status = "failed"
                record.reason = "stalled: the simulation ran out of events before this request finished"
                record.finish_time = self.env.now

    async def _serve(self, req: Request, record: RequestRecord) -> None:
        await serve_request(self.strategy, list(self.engines.values()), req, record, self.runtime)
        if self._itl is not None:
            if record.status == "ok":
                self._itl.add_request(record.token_times)
            record.drop_tokens()
        self._open -= 1
        if self._progress is not None:
            total, done = self._total, self._total - self._open
            if done * 10 // total != (done - 1) * 10 // total:  # another tenth has ended
                self._progress(done, total, self.env.now)
        if not self._open:
            self._all_done.succeed()

    @staticmethod
    def _engine_stats(engine: SimEngine) -> dict:
        return common_engine_stats(engine.sched, engine.steps, engine.busy_s)

    def check_no_leaks(self) -> None:
        """Raise KVLeakError if any live engine still holds used or reserved pages."""
        for engine in self.engines.values():
            if engine.down is not None:
                continue  # a dead engine holds nothing: its pages went with its process
            engine.sched.kv.check_no_leaks()
            if engine.sched.holds_sequences:
                from core_api.kv_cache import KVLeakError

                raise KVLeakError(f"engine {engine.id} still has sequences after the run")


def simulate(config, workload: Workload | None = None,
             progress: Callable[[int, int, float], None] | None = None) -> RunResult:
    """Run a SimConfig (its workload unless one is given); `progress` as in SimCluster.run."""
    from core_api.workload import generate

    workload = workload if workload is not None else generate(config.workload.model_copy(update={"seed": config.seed}),
                                                              lazy=True)
    cluster = SimCluster(config.cluster)
    result = cluster.run(workload, seed=config.seed, config_echo=config.model_dump(mode="json"), faults=config.faults,
                         token_times=config.token_times, progress=progress)
    cluster.check_no_leaks()  # every page of every live engine free or cached: raises KVLeakError if not
    return result
