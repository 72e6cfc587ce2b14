"""A real serving run on disk: the per-request log, the engine's settings, its queue over time.

Layout (as written by vLLM benchmark recorders such as LLMServingSim's `bench`):

- `requests.jsonl`: per request `request_id, input_toks, output_toks, queued_ts, first_token_ts,
  last_token_ts` (engine-monotonic seconds; `queued_ts` is the arrival on that clock);
- `meta.json`: `engine_kwargs` (max_num_seqs, max_num_batched_tokens, max_model_len, dtype,
  tensor_parallel_size, data_parallel_size, pipeline_parallel_size, quantization, kv_cache_dtype),
  `model`, and where recorded `kv_cache` (num_gpu_blocks per engine, block_size,
  enable_prefix_caching, gpu_memory_utilization),
  `hardware.device_name` and `resolved_config` (vLLM's configuration as it ran: its scheduler,
  model, parallel and cache sections, which take precedence, since they include the defaults the
  engine filled in);
- `timeseries.csv` (optional): per tick `t, running, waiting, kv_cache_pct, ...`;
- `llmservingsim_config.json` (optional, in validation bundles): names the GPU
  (`nodes[].instances[].hardware`), used when meta.json records no device. These two only help
  (a diagnostic, a hint): one that cannot be read is left out with a warning (`RealRun.warnings`);
- the workload it replayed (optional; `meta.dataset_path`, JSONL with `input_tok_ids`), which
  gives the prompts' real token ids and so their shared prefixes.

Metric definitions, per request: TTFT = first_token_ts - queued_ts; TPOT = (last_token_ts -
first_token_ts) / max(1, output_toks - 1); latency = last_token_ts - queued_ts.
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from core_api.config_base import MAX_ENGINES, MAX_GPUS_PER_ENGINE, MAX_PAGES
from core_api.config_file import parse_json
from core_api.types import MAX_REQUEST_TOKENS
from core_api.validation_errors import format_validation_error
from sim.profile import read_json


class RunDirError(ValueError):
    """A run directory that cannot be replayed; the message names the file and field."""



class RequestLine(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)
    request_id: str
    input_toks: int = Field(ge=1, le=MAX_REQUEST_TOKENS)
    output_toks: int = Field(ge=1, le=MAX_REQUEST_TOKENS)
    queued_ts: float
    first_token_ts: float
    last_token_ts: float

    @model_validator(mode="after")
    def _ordered(self) -> RequestLine:
        if not self.queued_ts <= self.first_token_ts <= self.last_token_ts:
            raise ValueError("need queued_ts <= first_token_ts <= last_token_ts")
        return self


class _Section(BaseModel):
    model_config = ConfigDict(extra="ignore", protected_namespaces=())


class EngineKwargs(_Section):
    """What the recorder passed to the engine; unset fields took the engine's defaults, which
    `resolved_config` (when recorded) states."""
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    max_model_len: int | None = Field(None, ge=1)
    dtype: str | None = None
    tensor_parallel_size: int | None = Field(None, ge=1, le=MAX_GPUS_PER_ENGINE)
    data_parallel_size: int | None = Field(None, ge=1, le=MAX_ENGINES)
    pipeline_parallel_size: int | None = Field(None, ge=1, le=MAX_GPUS_PER_ENGINE)
    quantization: str | None = None
    kv_cache_dtype: str | None = None


class KVCacheInfo(_Section):
    num_gpu_blocks: int | None = Field(None, ge=1, le=MAX_PAGES + 1)  # + vLLM's null block
    block_size: int | None = Field(None, ge=1)
    enable_prefix_caching: bool | None = None
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    cache_dtype: str | None = None  # vLLM's resolved cache_config calls kv_cache_dtype this


class _ResolvedScheduler(_Section):
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)


class _ResolvedModel(_Section):
    max_model_len: int | None = Field(None, ge=1)
    dtype: str | None = None
    quantization: str | None = None


class _ResolvedParallel(_Section):
    tensor_parallel_size: int | None = Field(None, ge=1, le=MAX_GPUS_PER_ENGINE)
    data_parallel_size: int | None = Field(None, ge=1, le=MAX_ENGINES)
    pipeline_parallel_size: int | None = Field(None, ge=1, le=MAX_GPUS_PER_ENGINE)


class ResolvedConfig(_Section):
    """The engine's configuration as it ran (vLLM's resolved config), defaults filled in."""
    scheduler_config: _ResolvedScheduler = _ResolvedScheduler()
    model_config_: _ResolvedModel = Field(_ResolvedModel(), alias="model_config")
    parallel_config: _ResolvedParallel = _ResolvedParallel()
    cache_config: KVCacheInfo = KVCacheInfo()


class HardwareInfo(BaseModel):
    model_config = ConfigDict(extra="ignore")
    device_name: str | None = None


class RunMeta(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    engine_kwargs: EngineKwargs
    kv_cache: KVCacheInfo | None = None
    hardware: HardwareInfo | None = None
    dataset_path: str | None = None
    vllm_version: str | None = None
    resolved_config: ResolvedConfig | None = None

    def settings(self) -> RunSettings:
        """The engine's settings: as it resolved them where recorded, else as the recorder passed
        them, else vLLM's defaults for what neither says."""
        kw, kv = self.engine_kwargs, self.kv_cache or KVCacheInfo()
        rc = self.resolved_config or ResolvedConfig()
        sched, model, cache = rc.scheduler_config, rc.model_config_, rc.cache_config

        assumed: list[tuple[str, object]] = []  # batch limits neither recorded: vLLM's defaults for them vary

        def first(*values, default=None, name=None):
            value = next((v for v in values if v is not None), None)
            if value is None and name:
                assumed.append((name, default))
            return default if value is None else value

        dtype = first(model.dtype, kw.dtype, default="auto")
        parallel = rc.parallel_config
        return RunSettings(
            max_num_seqs=first(sched.max_num_seqs, kw.max_num_seqs, default=256, name="max_num_seqs"),
            max_num_batched_tokens=first(sched.max_num_batched_tokens, kw.max_num_batched_tokens, default=2048,
                                         name="max_num_batched_tokens"),
            max_model_len=first(model.max_model_len, kw.max_model_len),
            dtype=dtype.removeprefix("torch."),
            quantization=first(model.quantization, kw.quantization),
            kv_cache_dtype=first(cache.cache_dtype, kw.kv_cache_dtype, default="auto"),
            tp=first(parallel.tensor_parallel_size, kw.tensor_parallel_size, default=1),
            dp=first(parallel.data_parallel_size, kw.data_parallel_size, default=1),
            pp=first(parallel.pipeline_parallel_size, kw.pipeline_parallel_size, default=1),
            num_gpu_blocks=first(cache.num_gpu_blocks, kv.num_gpu_blocks),
            block_size=first(cache.block_size, kv.block_size, default=16),
            prefix_caching=first(cache.enable_prefix_caching, kv.enable_prefix_caching, default=True),
            gpu_memory_utilization=first(cache.gpu_memory_utilization, kv.gpu_memory_utilization, default=0.9),
            assumed=tuple(assumed))


@dataclass(frozen=True)
class RunSettings:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int | None
    dtype: str
    quantization: str | None
    kv_cache_dtype: str  # vLLM's: "auto" (the activations', 16 bits) or an FP8 format
    tp: int
    dp: int  # engines (data-parallel ranks), each with tp GPUs and its own KV blocks
    pp: int
    num_gpu_blocks: int | None  # per engine
    block_size: int
    prefix_caching: bool
    gpu_memory_utilization: float
    assumed: tuple[tuple[str, object], ...] = ()  # (name, value) of the batch limits taken from defaults


@dataclass
class RealRun:
    path: Path
    meta: RunMeta
    requests: list[RequestLine]  # in arrival (queued_ts) order
    timeseries: dict[str, np.ndarray] | None
    prompts: list[np.ndarray] | None  # token ids per request, same order, when the workload was found
    workload_path: Path | None
    hardware_hint: str | None = None  # the GPU llmservingsim_config.json names, if any (see _read_hardware_hint)
    warnings: list[str] = field(default_factory=list)  # optional files left out, and why

    @property
    def name(self) -> str:
        return self.path.name

    def arrivals(self) -> np.ndarray:
        """Arrival times in seconds from the first arrival."""
        q = np.array([r.queued_ts for r in self.requests])
        return q - q[0]

    def latencies(self) -> dict[str, np.ndarray]:
        """ttft, tpot, e2el per request in seconds, by the definitions above."""
        q = np.array([r.queued_ts for r in self.requests])
        first = np.array([r.first_token_ts for r in self.requests])
        last = np.array([r.last_token_ts for r in self.requests])
        out = np.array([r.output_toks for r in self.requests])
        return {"ttft": first - q, "tpot": (last - first) / np.maximum(1, out - 1), "e2el": last - q}


def _read_requests(path: Path) -> list[RequestLine]:
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise RunDirError(f"{path}: cannot read: {e.strerror}") from None
    out = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            out.append(RequestLine.model_validate(parse_json(line)))
        except json.JSONDecodeError as e:
            raise RunDirError(f"{path}:{i}: not JSON: {e.msg}") from None
        except ValidationError as e:
            raise RunDirError(f"{path}:{i}: {format_validation_error(e)}") from None
    if not out:
        raise RunDirError(f"{path}: no requests")
    ids = [r.request_id for r in out]
    if len(set(ids)) != len(ids):
        raise RunDirError(f"{path}: request_id values repeat")
    return sorted(out, key=lambda r: r.queued_ts)


def _read_meta(path: Path) -> RunMeta:
    data = read_json(path, "run metadata", RunDirError)
    try:
        return RunMeta.model_validate(data)
    except ValidationError as e:
        raise RunDirError(f"{path}: {format_validation_error(e)}") from None


def _read_hardware_hint(path: Path, warnings: list[str]) -> str | None:
    """The GPU a validation bundle's llmservingsim_config.json names for its one kind of instance
    (`nodes[].instances[].hardware`): where meta.json records no device, the run's GPU. Only a
    hint: a file that cannot be read is left out with a warning."""
    if not path.is_file():
        return None
    try:
        data = read_json(path, "simulator config", RunDirError)
        names = {inst["hardware"] for node in data["nodes"] for inst in node["instances"]}
    except (RunDirError, KeyError, TypeError) as e:
        why = str(e).removeprefix(f"{path}: ") if isinstance(e, RunDirError) else \
            "expected nodes[].instances[].hardware"
        warnings.append(f"{path}: left out ({why})")
        return None
    if len(names) != 1 or not isinstance(next(iter(names)), str):
        return None  # several kinds of GPU, or none: no single answer
    return next(iter(names))


TIMESERIES_COLUMNS = ("t", "running", "waiting")


def _read_timeseries(path: Path, warnings: list[str]) -> dict[str, np.ndarray] | None:
    """The queue over time (only a diagnostic: a file that cannot be read is left out, with a
    warning, and the replay goes on)."""
    if not path.exists():
        return None
    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or not set(TIMESERIES_COLUMNS) <= set(rows[0]):
            raise ValueError(f"needs columns {', '.join(TIMESERIES_COLUMNS)}")
        return {k: np.array([float(r[k]) for r in rows]) for k in TIMESERIES_COLUMNS}
    except (ValueError, TypeError, OSError, UnicodeDecodeError, csv.Error) as e:
        warnings.append(f"{path}: left out ({e})")
        return None


def find_workload(run_dir: Path, meta: RunMeta) -> Path | None:
    """The workload file meta.json names: relative to the run directory, else to the folders
    above it (recorders write it relative to their own root)."""
    if not meta.dataset_path:
        return None
    rel = Path(meta.dataset_path)
    if rel.is_absolute():
        return rel if rel.exists() else None
    for base in (run_dir, run_dir.parent, run_dir.parent.parent):
        if (base / rel).exists():
            return base / rel
    return None


def _read_prompts(path: Path, requests: list[RequestLine]) -> list[np.ndarray] | None:
    """Token ids for each request, matched by position in the workload (request ids end in it);
    None, with the reason raised, when they do not line up."""
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                rows.append(parse_json(line))
            except json.JSONDecodeError as e:
                raise RunDirError(f"{path}:{i}: not JSON: {e.msg}") from None
    prompts = []
    for r in requests:
        suffix = r.request_id.rsplit("-", 1)[-1]
        if not suffix.isdigit() or int(suffix) >= len(rows):
            raise RunDirError(f"{path}: cannot match request {r.request_id!r} to a workload line")
        ids = rows[int(suffix)].get("input_tok_ids")
        if not isinstance(ids, list) or len(ids) != r.input_toks:
            raise RunDirError(f"{path}: line {int(suffix) + 1} has no input_tok_ids of length {r.input_toks} "
                              f"for request {r.request_id!r}")
        prompts.append(np.asarray(ids, dtype=np.int64))
    return prompts


def load_run(run_dir: str | Path, workload: str | Path | None = None) -> RealRun:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunDirError(f"{run_dir}: not a directory")
    for name in ("requests.jsonl", "meta.json"):
        if not (run_dir / name).is_file():
            raise RunDirError(f"{run_dir}: missing {name}")
    meta = _read_meta(run_dir / "meta.json")
    requests = _read_requests(run_dir / "requests.jsonl")
    if workload is not None and not Path(workload).is_file():
        raise RunDirError(f"{workload}: workload file not found")
    workload_path = Path(workload) if workload is not None else find_workload(run_dir, meta)
    prompts = _read_prompts(workload_path, requests) if workload_path is not None else None
    warnings: list[str] = []
    timeseries = _read_timeseries(run_dir / "timeseries.csv", warnings)
    hint = _read_hardware_hint(run_dir / "llmservingsim_config.json", warnings)
    return RealRun(run_dir, meta, requests, timeseries, prompts, workload_path, hint, warnings)
