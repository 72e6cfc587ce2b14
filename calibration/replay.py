"""Replay a real serving run on the simulator and compare them request by request.

The simulated engine is built from the run's own settings (model, GPU, TP, dtype, batch
limits, KV block size, the KV capacity the run reported, prefix caching) and scheduled by the
shared scheduler under vLLM's admission policy (SchedulingPolicy.vllm). A run with
`data_parallel_size` > 1 gets that many such engines, balanced as vLLM's API server balances them
(strategies/vllm_dp.py). Arrivals are replayed exactly, prompts carry the run's token ids when its
workload file is found (so prefix-cache hits happen where they happened), and every request
generates exactly its logged output length.
Nothing here is tuned to a run: what differs between runs comes from their own files.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from calibration.best_profile import best_cost_model
from calibration.real_run import RealRun, RunDirError, RunSettings
from core_api.metrics import latency_stats
from core_api.scheduler_config import SchedulingPolicy
from core_api.types import Request, SamplingParams
from core_api.workload import Workload
from sim.cluster import RunResult, SimCluster
from sim.config import ClusterConfig, EngineConfig, StrategyConfig
from sim.cost_models import load_profile
from sim.hardware import get_model, gpu_for_device
from sim.model_names import says_fp8

STATS = ("mean", "median", "p90", "p95", "p99")
METRICS = ("ttft", "tpot", "e2el")
_DTYPES = {"bfloat16": "bf16", "bf16": "bf16", "float16": "bf16", "half": "bf16", "auto": "bf16",
           "fp8": "fp8", "float8": "fp8"}
_FP8_QUANTIZATIONS = ("fp8", "fbgemm_fp8")
_FP8_IF_NAMED = ("compressed-tensors", "modelopt")  # these carry several formats; the name says which


def summary(values_s: np.ndarray) -> dict[str, float]:
    """mean, median, p90, p95, p99 in ms (core_api.metrics' definitions)."""
    stats = latency_stats("x", np.asarray(values_s, float), (90, 95, 99))
    return {stat: stats[f"{stat}_x_ms"] for stat in STATS}


def compare(real: dict[str, np.ndarray], sim: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """{"mean_ttft_ms": {"real", "sim", "diff_pct"}, ...}; diff_pct = (sim - real) / real x 100."""
    out = {}
    for m in METRICS:
        r, s = summary(real[m]), summary(sim[m])
        for stat in STATS:
            diff = (s[stat] - r[stat]) / r[stat] * 100 if r[stat] else float("nan")
            out[f"{stat}_{m}_ms"] = {"real": r[stat], "sim": s[stat], "diff_pct": diff}
    return out


def resolve_gpu(run: RealRun, override: str | None, profile_gpu: str | None) -> str:
    """--gpu; else the GPU the run names (meta.json's device, else the bundle's simulator config);
    else the profile's."""
    if override:
        return override
    named = (("meta.json: hardware.device_name", run.meta.hardware.device_name if run.meta.hardware else None),
             ("llmservingsim_config.json: hardware", run.hardware_hint))
    for where, name in named:
        if name:
            gpu = gpu_for_device(name)
            if gpu is None:
                raise RunDirError(f"{run.path}/{where} {name!r} has no GPU preset; "
                                  f"pass --gpu with a preset name or an inline spec")
            return gpu.name
    if profile_gpu:
        return profile_gpu
    raise RunDirError(f"{run.path}/meta.json: no hardware.device_name; pass --gpu (or a profile that names its GPU)")


def engine_config(run: RealRun, gpu: str, model: str | None = None) -> EngineConfig:
    """The run's engines: one config, `count` data-parallel ranks."""
    st = run.meta.settings()
    if st.pp > 1:
        raise RunDirError(f"{run.path}/meta.json: pipeline_parallel_size {st.pp} is not modelled (tensor and "
                          f"data parallelism are)")
    name = model or run.meta.model
    spec = get_model(name, _dtype(run, st, name))
    fields = {"gpu": gpu, "model": spec, "tp": st.tp, "max_num_seqs": st.max_num_seqs,
              "max_num_batched_tokens": st.max_num_batched_tokens,
              "max_model_len": st.max_model_len or spec.max_context,
              "policy": SchedulingPolicy.vllm(prefix_caching=st.prefix_caching),
              "page_size": st.block_size, "mem_util": st.gpu_memory_utilization, "count": st.dp,
              "kv_dtype": _kv_dtype(run, st)}
    if st.num_gpu_blocks:
        # vLLM's block pool keeps one null block that no request can use.
        fields["num_pages"] = max(1, st.num_gpu_blocks - 1)
    return EngineConfig(**fields)


def _dtype(run: RealRun, st: RunSettings, model: str) -> str:
    """bf16 or fp8 weights, from the run's dtype and quantization (or an FP8 checkpoint's name)."""
    dtype = _DTYPES.get(st.dtype.lower())
    if dtype is None:
        raise RunDirError(f"{run.path}/meta.json: dtype {st.dtype!r} not understood; one of {', '.join(_DTYPES)}")
    quant = (st.quantization or "").lower()
    if quant in _FP8_QUANTIZATIONS or (quant in ("", *_FP8_IF_NAMED) and says_fp8(model)):
        return "fp8"
    if quant:
        raise RunDirError(f"{run.path}/meta.json: quantization {st.quantization!r} is not modelled; weights in "
                          f"16 bits or FP8 ({', '.join(_FP8_QUANTIZATIONS)}, or an FP8 checkpoint) are")
    return dtype


def _kv_dtype(run: RealRun, st: RunSettings) -> str:
    """The KV cache's dtype: vLLM's "auto" keeps the activations' 16 bits (an FP8 checkpoint too);
    its fp8 formats store one byte."""
    kv = st.kv_cache_dtype.lower()
    dtype = "fp8" if kv.startswith("fp8") else _DTYPES.get(kv)  # auto and 16-bit names as for the weights
    if dtype is not None:
        return dtype
    raise RunDirError(f"{run.path}/meta.json: kv_cache_dtype {st.kv_cache_dtype!r} is not modelled; auto, "
                      f"16 bits or fp8 are")


def workload(run: RealRun, seed: int = 0) -> Workload:
    """The run's requests at their arrival times; prompts are the real token ids when known,
    otherwise distinct random ids (then no two prompts share a prefix)."""
    rng = np.random.default_rng(seed)
    arrivals = run.arrivals()
    reqs = []
    for i, (line, t) in enumerate(zip(run.requests, arrivals)):
        prompt = run.prompts[i] if run.prompts is not None else rng.integers(0, 2**31 - 1, line.input_toks)
        reqs.append(Request(line.request_id, prompt, SamplingParams(max_tokens=line.output_toks, ignore_eos=True),
                            arrival_time=float(t)))
    return Workload(reqs, name=run.name)


def strategy_for(engines: int) -> str:
    """How the run's requests reached its engines: one engine takes all; several (data-parallel
    ranks) are balanced by vLLM's API server."""
    return "vllm_dp" if engines > 1 else "round_robin"


@dataclass
class Replay:
    run: RealRun
    result: RunResult
    queue_traces: list[list[tuple[float, int, int, float]]]  # per engine: (time, running, waiting, KV used)
    cost_model: str  # what priced the steps: "roofline" or a profile's path
    warnings: list[str]  # what the replay had to assume, besides the run's own warnings

    def sim_latencies(self) -> dict[str, np.ndarray]:
        recs = {r.request_id: r for r in self.result.records}
        ttft, tpot, e2el = [], [], []
        for line in self.run.requests:
            rec = recs[line.request_id]
            first, last = rec.first_token_time, rec.last_token_time
            ttft.append(first - rec.arrival_time)
            tpot.append((last - first) / max(1, rec.output_len - 1))
            e2el.append(last - rec.arrival_time)
        return {"ttft": np.array(ttft), "tpot": np.array(tpot), "e2el": np.array(e2el)}

    def metrics(self) -> dict[str, dict[str, float]]:
        return compare(self.run.latencies(), self.sim_latencies())

    def failed(self) -> list[str]:
        return [f"{r.request_id}: {r.reason}" for r in self.result.records if r.status != "ok"]


def replay(run: RealRun, cost_model: str = "auto", gpu: str | None = None, model: str | None = None,
           seed: int = 0, progress: Callable[[int, int, float], None] | None = None) -> Replay:
    """cost_model: "auto" (the best profile the project ships for the run's GPU, model and TP:
    calibration.best_profile), "roofline" (the defaults fitted on every GPU) or the path of a
    profile (any kind sim.cost_models.load_profile reads)."""
    profile_gpu = None
    if cost_model not in ("roofline", "auto"):
        profile_gpu = getattr(load_profile(cost_model), "gpu", None)
    ec = engine_config(run, resolve_gpu(run, gpu, profile_gpu), model)
    if cost_model == "auto":
        cost_model = best_cost_model(ec)
    cluster = SimCluster(ClusterConfig(engines=[ec], strategy=StrategyConfig(name=strategy_for(ec.count)),
                                       cost_model=cost_model))
    traces: list[list[tuple[float, int, int, float]]] = []
    for engine in cluster.engines.values():
        engine.queue_trace = []
        traces.append(engine.queue_trace)
    warnings = []
    settings = run.meta.settings()
    if settings.assumed:
        # vLLM's defaults moved between versions and depend on the GPU and how the engine was
        # started (e.g. 8192 tokens and 1024 sequences on 80 GB GPUs for its API server since 0.9).
        names = " or ".join(name for name, _ in settings.assumed)
        values = ", ".join(f"{name} {value}" for name, value in settings.assumed)
        warnings.append(f"{run.path}/meta.json records neither the resolved nor the passed {names}: assumed "
                        f"{values} (vLLM's defaults differ by version, GPU and entry point)")
    if not settings.num_gpu_blocks:
        kv = next(iter(cluster.engines.values())).sched.kv
        # Admission and preemption follow the KV capacity, so an estimate can move every latency.
        warnings.append(f"{run.path}/meta.json records no kv_cache.num_gpu_blocks: KV capacity estimated from the "
                        f"GPU's memory as {kv.num_pages} pages of {kv.page_size} tokens")
    result = cluster.run(workload(run, seed), seed=seed, progress=progress)  # progress: as SimCluster.run
    cluster.check_no_leaks()
    replayed = Replay(run, result, traces, cost_model, warnings)
    failed = replayed.failed()
    if failed:
        raise RunDirError(f"{len(failed)} request(s) failed in the simulation, first: {failed[0]}")
    return replayed
