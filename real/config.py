"""Validated configuration of real engines and of a real cluster (CLI flags and files land here).

An `EngineSpec` is everything one engine process needs to start: which model (a preset name, an
HF directory or a GGUF file), on which device, with how much KV memory and which scheduler
limits. It travels to a spawned process as JSON, never pickled. A `RealClusterConfig` lists
engines (spawned here, or already running elsewhere and named by address) and the strategy.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from core_api.config_base import (
    MAX_ENGINES,
    MAX_PAGES,
    StrategyConfig,
    Strict,
    check_unique,
    expand_engine_ids,
)
from core_api.scheduler_config import SchedulerLimits, limit_default
from core_api.workload import WorkloadSpec

MODEL_ALIASES = {"smollm2": "smollm2-135m"}


class EngineSpec(Strict, SchedulerLimits):
    """One engine process. CPU defaults are small so two engines and a router share 2 cores."""

    id: str = "e0"
    model: str = "tiny"  # tiny | smollm2 | path to an HF directory or a .gguf file
    model_seed: int = 0  # random weights (tiny) only
    dtype: Literal["float32", "bfloat16", "float16"] | None = None  # default: the model's own
    device: str = "cpu"
    threads: int = Field(1, ge=1)  # torch intra-op threads of this process
    batch_invariant: bool = True  # bit-exact tokens whatever the batching (DESIGN point 5)
    num_pages: int = Field(1024, ge=1, le=MAX_PAGES)
    # The scheduler limits are core_api's SchedulerLimits; a CPU engine gets smaller defaults.
    max_num_batched_tokens: int = limit_default("max_num_batched_tokens", 512)
    max_num_seqs: int = limit_default("max_num_seqs", 64)
    max_model_len: int = limit_default("max_model_len", 4096)
    # How this engine ships KV it sends. auto: shared memory between CPU engines of one host, zmq
    # otherwise (GPU pages staged through pinned memory); cuda_ipc: device to device between GPU
    # engines of one host; nccl: torch.distributed between GPUs.
    transport: str = "auto"  # a module of real.transports, or auto (real.transport.resolve_mode)
    peer_timeout_s: float = Field(10.0, gt=0)  # a receiver silent this long fails the transfer
    # Streamed tokens are sent to the router at most this often (a stream's first and last token
    # at once): 0 sends every step's tokens; a few ms cuts the router's messages (and the CPU it
    # takes from engines on a shared host) several-fold. Token times are stamped per step either way.
    stream_interval_s: float = Field(0.0, ge=0)
    listen: str = "tcp://127.0.0.1:0"  # port 0: pick a free one (reported when ready)
    # CurveZMQ key directory (real.keys): only holders of its keys may talk to this engine.
    # Required to listen beyond loopback.
    keys: str | None = None
    exit_with_parent: bool = False  # set by RealCluster: an engine never outlives its launcher
    # NCCL process group of the cluster's engines (transport "nccl"; filled in by RealCluster).
    nccl_init: str | None = None
    nccl_rank: int = -1
    nccl_world: int = 0

    @property
    def model_name(self) -> str:
        return MODEL_ALIASES.get(self.model, self.model)

    @model_validator(mode="after")
    def _keys_beyond_loopback(self) -> EngineSpec:
        from real.keys import is_loopback

        if self.keys is None and not is_loopback(self.listen):
            raise ValueError(f"an engine listening on {self.listen} (beyond loopback) needs keys: make a key "
                             "directory with `microserving keys DIR` and pass it with --keys DIR")
        return self

    @model_validator(mode="after")
    def _model_and_device_exist(self) -> EngineSpec:
        """Checked here, so a typo fails before any engine process starts."""
        from real.loading import check_device, check_model_name

        check_model_name(self.model_name)
        check_device(self.device)
        return self

    @model_validator(mode="after")
    def _transport_fits_device(self) -> EngineSpec:
        from real.transports import AUTO, transport_class

        if self.transport != AUTO and transport_class(self.transport).cuda_only and not self.device.startswith("cuda"):
            raise ValueError(f"transport {self.transport!r} needs a CUDA device, this engine runs on {self.device!r}")
        return self


class EngineEntry(EngineSpec):
    """An engine in a cluster config: spawned here (`count` copies) or already running at `address`."""

    id: str | None = None
    count: int = Field(1, ge=1, le=MAX_ENGINES)
    address: str | None = None  # tcp://host:port of an engine started with `microserving engine`

    @model_validator(mode="after")
    def _remote_is_single(self) -> EngineEntry:
        if self.address is not None and self.count != 1:
            raise ValueError("an engine given by address cannot have count > 1")
        return self


class RealClusterConfig(Strict):
    engines: list[EngineEntry] = Field(min_length=1)
    strategy: StrategyConfig = StrategyConfig()
    heartbeat_s: float = Field(0.5, gt=0)  # router -> engine ping period
    # No answer at all this long: the engine is dead. Engines answer pings between steps, so this
    # must exceed the longest step (a big CPU prefill chunk); local process deaths are seen in 0.1 s.
    heartbeat_timeout_s: float = Field(30.0, gt=0)
    # The same for engines reached by address (`--connect`): no process watchdog sees those die,
    # so silence is the only sign, and GPU engines answer between steps of milliseconds.
    remote_heartbeat_timeout_s: float = Field(5.0, gt=0)
    start_timeout_s: float = Field(120.0, gt=0)
    # CurveZMQ key directory (real.keys) of the router and of the engines it starts; without one a
    # fresh directory is made for the engines started here (engines reached by address are then
    # spoken to in the clear, so they must run without keys, on loopback).
    keys: str | None = None
    # False: no CURVE for the engines started here either (loopback only: benchmarks, debugging).
    auth: bool = True

    @model_validator(mode="after")
    def _unique_ids(self) -> RealClusterConfig:
        check_unique(expand_engine_ids(self.engines))
        return self

    @model_validator(mode="after")
    def _one_key_directory_for_mixed_clusters(self) -> RealClusterConfig:
        remote = [e.address for e in self.engines if e.address is not None]
        if self.auth and self.keys is None and remote and len(remote) < len(self.engines):
            raise ValueError(f"engines started here and engines reached by address ({', '.join(remote)}) must share "
                             "keys to exchange KV: make a directory with `microserving keys DIR`, start those "
                             "engines with --keys DIR and pass the same --keys DIR here")
        return self

    def expanded(self) -> list[tuple[str, EngineEntry]]:
        """(engine id, entry) per engine, `count` unrolled (core_api.config_base's id rule)."""
        entries = [e for e in self.engines for _ in range(e.count)]
        return list(zip(expand_engine_ids(self.engines), entries))

    def engine_specs(self) -> list[tuple[EngineSpec | None, str | None, str]]:
        """(spec to spawn or None, remote address or None, id) per engine."""
        out = []
        for eid, e in self.expanded():
            if e.address is not None:
                out.append((None, e.address, eid))
            else:
                data = e.model_dump(exclude={"count", "address"})
                data["id"] = eid
                out.append((EngineSpec(**data), None, eid))
        return out


def default_workload(vocab_size: int = 256) -> WorkloadSpec:
    """Small enough for a CPU: 16 chat-like requests at 4 req/s, ~64-token prompts, ~16 outputs."""
    return WorkloadSpec(num_requests=16, arrival={"process": "poisson", "rate": 4.0},
                        prompt_len={"kind": "lognormal", "mean": 64, "sigma": 0.6, "max": 256},
                        output_len={"kind": "lognormal", "mean": 16, "sigma": 0.5, "max": 64},
                        vocab_size=vocab_size)


class RealRunConfig(Strict):
    """What `microserving run --config` reads: a cluster, a workload (same spec as sim), a seed."""

    cluster: RealClusterConfig
    workload: WorkloadSpec = Field(default_factory=default_workload)
    seed: int = Field(0, ge=0)


def load_run_config(path: str | Path) -> RealRunConfig:
    """A RealRunConfig from YAML or JSON; a bare cluster config (top-level `engines`) is accepted."""
    from core_api.config_file import read_config_file

    data = read_config_file(path, "run config")
    if isinstance(data, dict) and "engines" in data:
        data = {"cluster": data}
    if isinstance(data, dict):
        resolve_key_paths(data.get("cluster"), Path(path).resolve().parent)
    return RealRunConfig.model_validate(data)


def resolve_key_paths(cluster, base: Path) -> None:
    """Key directories in a cluster file are relative to the file, wherever the command runs."""
    if not isinstance(cluster, dict):
        return
    for entry in [cluster, *(e for e in cluster.get("engines") or [] if isinstance(e, dict))]:
        keys = entry.get("keys")
        if isinstance(keys, str) and not Path(keys).is_absolute():
            entry["keys"] = str(base / keys)
