"""Write a simulated run of one engine config in the real-run format (calibration/real_run.py):
its `count` engines are the run's data-parallel ranks.

A simulated run written this way can be replayed (`microserving replay`), which must give back
its own metrics exactly: the test that replay's reading of a run and building of an engine
lose nothing. It is also how a simulated run reaches tools that read vLLM request logs.
"""
from __future__ import annotations

import json
from pathlib import Path

from core_api.workload import Workload
from sim.cluster import RunResult
from sim.config import EngineConfig
from sim.hardware import get_gpu

WORKLOAD_FILE = "workload.jsonl"


def write_run(result: RunResult, engine: EngineConfig, workload: Workload, out: str | Path,
              num_pages: int) -> Path:
    """requests.jsonl, meta.json and workload.jsonl (token ids) of a simulated run of `engine`'s
    engines. `num_pages` is each engine's usable page count (meta records vLLM's count, one more)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    records = {r.request_id: r for r in result.records}
    failed = [r.request_id for r in result.records if r.status != "ok"]
    if failed:
        raise ValueError(f"{len(failed)} request(s) failed in the run; only complete runs can be written")
    with (out / "requests.jsonl").open("w") as f:
        for i, req in enumerate(workload):
            rec = records[req.id]
            f.write(json.dumps({"request_id": f"{req.id}-{i}", "input_toks": req.prompt_len,
                                "output_toks": rec.output_len, "queued_ts": rec.arrival_time,
                                "first_token_ts": rec.first_token_time, "last_token_ts": rec.last_token_time}) + "\n")
    with (out / WORKLOAD_FILE).open("w") as f:
        for req in workload:
            f.write(json.dumps({"input_toks": req.prompt_len, "input_tok_ids": req.prompt.tolist()}) + "\n")
    model, gpu = engine.model_spec(), get_gpu(engine.gpu)
    meta = {
        "model": model.name,
        "engine_kwargs": {"max_num_seqs": engine.max_num_seqs, "max_num_batched_tokens": engine.max_num_batched_tokens,
                          "max_model_len": engine.max_model_len, "dtype": "bfloat16" if model.dtype == "bf16" else "fp8",
                          "tensor_parallel_size": engine.tp, "data_parallel_size": engine.count,
                          "kv_cache_dtype": "auto" if (model.kv_dtype or model.dtype) == "bf16" else "fp8"},
        "kv_cache": {"num_gpu_blocks": num_pages + 1, "block_size": engine.page_size,
                     "enable_prefix_caching": engine.policy.prefix_caching,
                     "gpu_memory_utilization": engine.mem_util},
        "hardware": {"device_name": gpu.device_names[0] if gpu.device_names else gpu.name},
        "dataset_path": WORKLOAD_FILE,
        "source": "llm-microserving simulator",
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out
