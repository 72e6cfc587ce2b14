"""A run's results in the shape `vllm bench serve --save-result` writes, so the field's plotting
and comparison scripts read simulated and real runs alike.

Key names and units are vLLM's: the top-level figures (`duration` in s, throughputs per s, the
`mean_/median_/std_/pNN_{ttft,tpot,itl,e2el}_ms` statistics) and the per-request lists (`ttfts` in
s, `itls` as one list of gaps in s per request, `input_lens`, `output_lens`, `generated_texts`,
`errors`; a failed request has ttft 0, no itls, output length 0 and its reason in `errors`, as in
vLLM). `burstiness` is the gamma shape of the arrival gaps (1 = Poisson), as vLLM defines it.
"""
from __future__ import annotations

import datetime
import math
from collections.abc import Sequence

from core_api.types import RequestRecord

STAT_PREFIXES = ("mean_", "median_", "std_", "p")
STAT_METRICS = ("_ttft_ms", "_tpot_ms", "_itl_ms", "_e2el_ms")


def vllm_bench_result(records: Sequence[RequestRecord], metrics: dict, *, backend: str, model_id: str,
                      request_rate: float, burstiness: float = 1.0, max_concurrency: int | None = None,
                      generated_texts: Sequence[str] | None = None, date: str | None = None) -> dict:
    if any(r.summary is not None for r in records):
        raise ValueError("vLLM's result format lists every request's inter-token gaps; these records dropped "
                         "their token times")
    ok = [r.status == "ok" for r in records]
    result = {
        "date": date or datetime.datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": backend,
        "model_id": model_id,
        "tokenizer_id": model_id,
        "num_prompts": len(records),
        "request_rate": request_rate if math.isfinite(request_rate) else "inf",
        "burstiness": burstiness,
        "max_concurrency": max_concurrency,
        "duration": metrics.get("duration_s"),
        "completed": metrics.get("completed"),
        "failed": len(records) - sum(ok),
        "total_input_tokens": metrics.get("total_input_tokens"),
        "total_output_tokens": metrics.get("total_output_tokens"),
        "request_throughput": metrics.get("request_throughput"),
        "request_goodput": metrics.get("request_goodput"),
        "output_throughput": metrics.get("output_throughput"),
        "total_token_throughput": metrics.get("total_token_throughput"),
        "input_lens": [r.prompt_len for r in records],
        "output_lens": [r.output_len if good else 0 for r, good in zip(records, ok)],
        "ttfts": [r.first_token_time - r.arrival_time if good and r.output_len else 0.0
                  for r, good in zip(records, ok)],
        "itls": [[b - a for a, b in zip(r.token_times, r.token_times[1:])] if good else []
                 for r, good in zip(records, ok)],
        "generated_texts": list(generated_texts) if generated_texts is not None else [""] * len(records),
        "errors": ["" if good else (r.reason or r.status) for r, good in zip(records, ok)],
    }
    result |= {k: v for k, v in metrics.items() if k.startswith(STAT_PREFIXES) and k.endswith(STAT_METRICS)}
    return result


def traffic_of(workload) -> tuple[float, float | None]:
    """(request_rate, burstiness) as vLLM reports them, of a WorkloadSpec's arrivals (burstiness:
    the gamma shape of the gaps) or of a trace's (its mean rate; no burstiness parameter)."""
    arrival = getattr(workload, "arrival", None)
    if arrival is not None:
        return arrival.rate, 1.0 if arrival.process == "poisson" else 1.0 / arrival.cv**2
    return getattr(workload, "mean_rate", float("nan")), None


def save_vllm_result(path, records, metrics: dict, **fields) -> None:
    """Write vllm_bench_result(...) as JSON to `path` (its folder made if needed)."""
    import json
    from pathlib import Path

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(vllm_bench_result(records, metrics, **fields), allow_nan=True) + "\n")
