"""Validated configuration of a simulated cluster and of one simulation run."""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SerializeAsAny, field_validator, model_validator

from core_api.config_base import (
    MAX_ENGINES,
    MAX_GPUS_PER_ENGINE,
    MAX_PAGES,
    StrategyConfig,
    Strict,
    check_unique,
    expand_engine_ids,
)
from core_api.faults import FaultSchedule
from core_api.scheduler_config import SchedulerLimits
from core_api.workload import WorkloadSpec
from sim.cost_models import CostModelSpec, parse_cost_model
from sim.hardware import GPUSpec, ModelSpec, get_model
from sim.idle_cost import IdleCost
from sim.measured_host import MEASURED_HOST_FIELDS
from sim.network import LinkSpec
from sim.stream_cost import StreamCost


class EngineConfig(Strict, SchedulerLimits):
    """One engine: a model on `tp` GPUs. `count` > 1 stamps out identical engines. Its scheduler
    limits (page_size, max_num_batched_tokens, max_num_seqs, max_model_len, reservation_timeout_s,
    policy) are core_api's SchedulerLimits."""

    id: str | None = None
    count: int = Field(1, ge=1, le=MAX_ENGINES)
    gpu: str | GPUSpec = "H100-SXM"
    model: str | ModelSpec = "Llama-3.1-8B"
    dtype: str | None = None  # override the model preset's dtype ("bf16" or "fp8")
    kv_dtype: Literal["bf16", "fp8"] | None = None  # the KV cache's, if not the model's (vLLM's --kv-cache-dtype)
    tp: int = Field(1, ge=1, le=MAX_GPUS_PER_ENGINE)
    num_pages: int | None = Field(None, ge=1, le=MAX_PAGES)  # default: what fits in GPU memory
    mem_util: float = Field(0.9, gt=0, le=1)

    def model_spec(self) -> ModelSpec:
        """The model as this engine runs it: its dtype and KV cache dtype overrides applied."""
        model = get_model(self.model, self.dtype)
        if self.kv_dtype is not None and self.kv_dtype != (model.kv_dtype or model.dtype):
            model = model.model_copy(update={"kv_dtype": self.kv_dtype})
        return model


class LinkOverride(LinkSpec):
    src: str
    dst: str


class ClusterConfig(Strict):
    engines: list[EngineConfig] = Field(min_length=1)
    link: LinkSpec | None = None  # default: the first engine GPU's NVLink, 5 us latency
    links: list[LinkOverride] = Field(default_factory=list)
    strategy: StrategyConfig = StrategyConfig()
    cost_model: SerializeAsAny[CostModelSpec] = Field("roofline", validate_default=True, description=(
        "how a step is priced: {kind: roofline | fitted | layers, ...} or the shorthand 'roofline' / "
        "a profile path (sim.cost_models)"))
    rpc_latency_s: float = Field(0.0, ge=0, description=(
        "round trip of a control call router <-> engine: prep_recv and remote_send pay it, "
        "start_generate half (a fitted profile measures it; 0: calls are instantaneous)"))
    send_overhead_s: float = Field(0.0, ge=0, description="engine CPU per remote_send, added to its next step")
    recv_overhead_s: float = Field(0.0, ge=0, description=(
        "receiving engine CPU per KV handoff (the prep_recv call, landing the KV, completing it), added to its "
        "next step"))
    generate_overhead_s: float = Field(0.0, ge=0, description=(
        "engine CPU handling a start_generate call of a new request (decoding it, queuing the request), added "
        "to its next step"))
    handoff_generate_overhead_s: float = Field(0.0, ge=0, description=(
        "the same for a start_generate that continues a request whose KV was handed to the engine (begin > 0)"))
    router_cpu_per_token_s: float = Field(0.0, ge=0, description=(
        "CPU a router sharing the engines' cores spends per streamed token, taken from every engine in equal "
        "shares: a step in progress ends later, an engine between steps pays in its next step (0: the router "
        "has cores of its own)"))
    crash_detect_s: float = Field(0.1, ge=0, description=(
        "how long after an engine process dies the router notices (real: its process watchdog polls every 0.1 s)"))
    heartbeat_timeout_s: float = Field(30.0, gt=0, description=(
        "a stalled engine silent this long is declared dead by the router, as on real engines (RealClusterConfig)"))
    stream: StreamCost | None = Field(None, description=(
        "what streaming tokens to the router costs each engine between steps, and its stream interval "
        "(sim.stream_cost; a CPU profile measures it; None: nothing)"))
    idle: IdleCost | None = Field(None, description=(
        "what the first step after an idle spell costs each engine extra, by the spell's length "
        "(sim.idle_cost; a CPU profile measures it; None: nothing)"))
    measured_host: bool = Field(False, description=(
        "take the link and host effects from the fitted profile in cost_model (what it measured around "
        "the steps: KV transfers, control calls, streaming, idle steps, a colocated router's CPU; calls read "
        "between steps), as `calibrate validate` simulates real engines (sim.measured_host)"))
    calls_between_steps: bool = Field(False, description=(
        "engines answer prep_recv and take in KV chunks and acknowledgements only between steps, as a real "
        "engine loop does (sim.engine.SimEngine); every step is then simulated on its own, no decode runs"))

    @model_validator(mode="before")
    @classmethod
    def _efficiency_moved(cls, data):
        if isinstance(data, dict) and "efficiency" in data:
            raise ValueError("efficiency belongs to the roofline cost model now: write "
                             "cost_model: {kind: roofline, efficiency: {...}}")
        return data

    @field_validator("cost_model", mode="before")
    @classmethod
    def _cost_model_of_its_kind(cls, value):
        return parse_cost_model(value)

    @model_validator(mode="after")
    def _measured_host_alone(self) -> ClusterConfig:
        if self.measured_host:
            if self.cost_model.kind != "fitted":
                raise ValueError(f"measured_host takes the host effects from a fitted profile; the cost model is "
                                 f"{self.cost_model.kind!r}")
            # A field at its default is not set (a config dumped and validated again lists every field).
            clash = sorted(f for f in MEASURED_HOST_FIELDS if getattr(self, f) != type(self).model_fields[f].default)
            if clash:
                raise ValueError(f"measured_host sets {', '.join(clash)} from the profile: leave "
                                 f"{'it' if len(clash) == 1 else 'them'} out, or measured_host off")
        return self

    @model_validator(mode="after")
    def _unique_ids(self) -> ClusterConfig:
        check_unique(self.engine_ids())
        return self

    def engine_ids(self) -> list[str]:
        return expand_engine_ids(self.engines)

    def expanded(self) -> list[tuple[str, EngineConfig]]:
        """(engine id, its config) for every engine, `count` unrolled."""
        out, ids = [], iter(self.engine_ids())
        for e in self.engines:
            out.extend((next(ids), e) for _ in range(e.count))
        return out


class SimConfig(Strict):
    """Everything one simulation needs; the CLI's --config file holds this (YAML or JSON)."""

    cluster: ClusterConfig
    workload: WorkloadSpec
    seed: int = Field(0, ge=0)
    faults: FaultSchedule = FaultSchedule()  # what goes wrong during the run (core_api.faults)
    # False: records keep each request's token count and first and last token time, and ITL
    # percentiles come from a histogram within 0.1% (core_api.itl_histogram): a run of millions
    # of requests then fits in memory. The results JSON then has no per-token times.
    token_times: bool = True


def default_config() -> SimConfig:
    """Llama-3.1-8B on two H100s as 1P1D, 1000 chat-like Poisson requests at 4 req/s."""
    return SimConfig(
        cluster=ClusterConfig(
            engines=[EngineConfig(count=2)],
            strategy=StrategyConfig(name="pd"),
        ),
        workload=WorkloadSpec(
            num_requests=1000,
            arrival={"process": "poisson", "rate": 4.0},
            prompt_len={"kind": "lognormal", "mean": 1024, "sigma": 0.8, "max": 8192},
            output_len={"kind": "lognormal", "mean": 256, "sigma": 0.6, "max": 2048},
        ),
    )


def load_config(path: str | Path) -> SimConfig:
    """Read a YAML or JSON SimConfig; errors name the offending field."""
    from core_api.config_file import read_config_file

    data = read_config_file(path, "simulator config")
    return SimConfig.model_validate(resolve_paths(data, Path(path).resolve().parent))


def resolve_paths(data, base: Path):
    """Relative file paths in a config mean relative to the config file, wherever the command
    runs: the cost profile, and a model given as a config.json path or model directory."""
    cluster = data.get("cluster") if isinstance(data, dict) else None
    if not isinstance(cluster, dict):
        return data
    cost = cluster.get("cost_model")
    if isinstance(cost, str) and cost != "roofline" and not Path(cost).is_absolute():
        cluster["cost_model"] = str(base / cost)
    elif isinstance(cost, dict) and isinstance(cost.get("path"), str) and not Path(cost["path"]).is_absolute():
        cost["path"] = str(base / cost["path"])
    for engine in cluster.get("engines") or []:
        model = engine.get("model") if isinstance(engine, dict) else None
        if isinstance(model, str) and not Path(model).is_absolute() and (base / model).exists():
            engine["model"] = str(base / model)
    return data
