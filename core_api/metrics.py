"""Serving metrics from RequestRecords, named and defined as in vLLM's serving benchmark.

Computed after a run, never inside it, so the hot loops only append timestamps. Definitions
(times in seconds on the run's clock, reported in milliseconds):

- ``ttft``  first token time - arrival time
- ``tpot``  (finish - first token) / (output_len - 1), only for requests with > 1 output token
- ``itl``   gaps between consecutive tokens, pooled over all requests
- ``e2el``  finish - arrival (end-to-end latency, a.k.a. JCT)

Only ``ok`` records feed latency and token counts; failed and aborted ones count against
SLO attainment. ``duration_s`` spans the first arrival to the last finish of *any* record,
so a run's throughput includes the time spent on requests that later failed.

Undefined values: a latency statistic with no samples (no ok records, or no request with two
tokens for tpot/itl) is NaN, because 0 ms would read as a perfect latency. Counts and
throughputs are 0 when there is nothing to count or the duration is 0.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from itertools import chain
from typing import TYPE_CHECKING

import numpy as np

from core_api.types import RequestRecord

if TYPE_CHECKING:
    from core_api.itl_histogram import ItlHistogram

LATENCIES = ("ttft", "tpot", "itl", "e2el")
SLO_KEYS = ("ttft_ms", "tpot_ms", "e2el_ms")
_ALWAYS_PERCENTILES = (90, 99)


def percentile_name(p: float) -> str:
    """vLLM's key spelling: 99 -> 'p99', 99.9 -> 'p99.9'."""
    return f"p{int(p)}" if float(p) == int(p) else f"p{p}"


def ordered_sum(values: np.ndarray) -> float:
    """The sum of `values` added in index order (np.add.accumulate): the same float on every numpy
    release and CPU. np.sum adds in pairwise blocks laid out for the SIMD width numpy picks, so its
    last bits move between releases (a run's mean ITL differed in its last digit between the numpy
    of Python 3.10 and of 3.11), and a seeded run's results must not."""
    return float(np.add.accumulate(values)[-1]) if values.size else 0.0


def median(values: np.ndarray) -> float:
    """np.median, the same float, without np.median's lazy import of numpy.ma (40 ms on every
    command that reports metrics): the middle value, or the mean of the two middle ones; NaN if
    any value is NaN (a partition puts NaNs last)."""
    n = values.size
    k = n // 2
    part = np.partition(values, [k - 1, k] if n % 2 == 0 else k)
    if np.isnan(part[-1]):
        return float("nan")
    return float(part[k]) if n % 2 else float(np.mean(part[k - 1 : k + 1]))


def percentiles_of(values: np.ndarray, percentiles: Sequence[float]) -> list[float]:
    """np.percentile(values, percentiles) with its default (linear) method, the same floats, without
    the import of numpy.ma it makes on its first call (40 ms on every command that reports
    metrics): numpy's own steps, its virtual index (n - 1) q, its neighbours and its two-sided
    interpolation; NaN if any value is NaN."""
    q = np.true_divide(np.asarray(percentiles, dtype=np.float64), 100)
    n = values.size
    virtual = (n - 1) * q
    prev = np.floor(virtual)
    nxt = prev + 1
    above, below = virtual >= n - 1, virtual < 0
    prev[above] = nxt[above] = -1
    prev[below] = nxt[below] = 0
    prev, nxt = prev.astype(np.intp), nxt.astype(np.intp)
    part = values.copy()
    part.partition(sorted({0, n - 1, *(int(i) % n for i in prev), *(int(i) % n for i in nxt)}))
    if np.isnan(part[-1]):
        return [float("nan")] * len(q)
    a, b = part[prev], part[nxt]
    gamma = np.asarray(virtual - prev, dtype=np.float64)
    diff = b - a
    out = np.add(a, diff * gamma)
    np.subtract(b, diff * (1 - gamma), out=out, where=gamma >= 0.5)
    return [float(v) for v in out]


def latency_stats(name: str, values_s: np.ndarray, percentiles: Sequence[float]) -> dict[str, float]:
    ms = values_s * 1000.0
    out: dict[str, float] = {}
    if ms.size == 0:
        nan = float("nan")
        out[f"mean_{name}_ms"] = out[f"median_{name}_ms"] = out[f"std_{name}_ms"] = nan
        for p in percentiles:
            out[f"{percentile_name(p)}_{name}_ms"] = nan
        return out
    mean = ordered_sum(ms) / ms.size
    out[f"mean_{name}_ms"] = mean
    out[f"median_{name}_ms"] = median(ms)
    out[f"std_{name}_ms"] = math.sqrt(ordered_sum((ms - mean) ** 2) / ms.size)
    for p, v in zip(percentiles, percentiles_of(ms, percentiles)):
        out[f"{percentile_name(p)}_{name}_ms"] = float(v)
    return out


def _pooled_itl(times: list[list[float]]) -> np.ndarray:
    """Every gap between consecutive tokens of one request, all requests in one array.

    Flattens once and drops the gaps that straddle two requests, which is far faster than a
    numpy call per request when there are 100k of them.
    """
    times = [t for t in times if len(t) > 1]
    if not times:
        return np.empty(0)
    lens = np.fromiter(map(len, times), dtype=np.int64, count=len(times))
    flat = np.fromiter(chain.from_iterable(times), dtype=np.float64, count=int(lens.sum()))
    gaps = np.diff(flat)
    keep = np.ones(gaps.size, dtype=bool)
    keep[np.cumsum(lens)[:-1] - 1] = False
    return gaps[keep]


def summarize(
    records: Iterable[RequestRecord],
    slos: Mapping[str, float] | None = None,
    percentiles: Sequence[float] = (50, 90, 99),
    itl: ItlHistogram | None = None,
) -> dict[str, float]:
    """All metrics of one run as a flat dict (vLLM key names). See the module docstring.

    ``itl``: the run's histogram of inter-token gaps, for records whose per-token times were
    dropped (core_api.itl_histogram); without it ITL comes exactly from the records' token times.

    ``slos`` maps any of ``ttft_ms``, ``tpot_ms``, ``e2el_ms`` to a limit in ms; when given,
    ``request_goodput`` (good requests / duration) and ``slo_attainment`` (good / all records)
    are added. A request is good when it is ok and meets every given limit; as in vLLM, a
    request with a single output token has tpot 0 for this test.
    """
    records = list(records)
    slos = dict(slos or {})
    bad = sorted(set(slos) - set(SLO_KEYS))
    if bad:
        raise ValueError(f"unknown SLO keys {bad}; known: {list(SLO_KEYS)}")
    pcts = sorted({float(p) for p in percentiles} | set(_ALWAYS_PERCENTILES))
    if any(not 0 <= p <= 100 for p in pcts):
        raise ValueError(f"percentiles must lie in [0, 100], got {list(percentiles)}")

    n = len(records)
    arrival_all = np.fromiter((r.arrival_time for r in records), dtype=np.float64, count=n)
    end_all = np.fromiter(
        (r.finish_time if r.finish_time is not None else (r.last_token_time if r.output_len else np.nan)
         for r in records), dtype=np.float64, count=n)
    status = [r.status for r in records]
    ok = np.fromiter((s == "ok" for s in status), dtype=bool, count=n)
    ok_recs = [r for r, good in zip(records, ok) if good]
    m = len(ok_recs)

    arrival, end = arrival_all[ok], end_all[ok]
    out_len = np.fromiter((r.output_len for r in ok_recs), dtype=np.int64, count=m)
    first = np.fromiter((r.first_token_time if r.output_len else np.nan for r in ok_recs),
                        dtype=np.float64, count=m)
    prompt_tokens = int(sum(r.prompt_len for r in ok_recs))
    output_tokens = int(out_len.sum())

    ttft = first - arrival  # NaN for an ok record that produced no token
    multi = out_len > 1
    tpot = (end[multi] - first[multi]) / (out_len[multi] - 1)
    e2el = end - arrival

    finite_end = end_all[~np.isnan(end_all)]
    duration = float(finite_end.max() - arrival_all.min()) if finite_end.size else 0.0
    duration = max(duration, 0.0)

    def per_s(x: float) -> float:
        return x / duration if duration > 0 else 0.0

    result: dict[str, float] = {
        "completed": m,
        "failed": sum(s == "failed" for s in status),
        "aborted": sum(s == "aborted" for s in status),
        "total_input_tokens": prompt_tokens,
        "total_output_tokens": output_tokens,
        "duration_s": duration,
        "request_throughput": per_s(m),
        "output_throughput": per_s(output_tokens),
        "total_token_throughput": per_s(prompt_tokens + output_tokens),
    }
    if slos:
        good = ~np.isnan(ttft) & ~np.isnan(e2el)
        if "ttft_ms" in slos:
            good &= ttft * 1000.0 <= slos["ttft_ms"]
        if "tpot_ms" in slos:
            tpot_all = np.zeros(m)
            tpot_all[multi] = tpot
            good &= tpot_all * 1000.0 <= slos["tpot_ms"]
        if "e2el_ms" in slos:
            good &= e2el * 1000.0 <= slos["e2el_ms"]
        n_good = int(good.sum())
        result["request_goodput"] = per_s(n_good)
        result["slo_attainment"] = n_good / n if n else 0.0

    if itl is None and any(r.summary is not None for r in ok_recs):
        raise ValueError("these records dropped their token times: their ITL needs the run's ItlHistogram")
    result.update(latency_stats("ttft", ttft[~np.isnan(ttft)], pcts))
    result.update(latency_stats("tpot", tpot, pcts))
    result.update(itl.stats("itl", pcts) if itl is not None else
                  latency_stats("itl", _pooled_itl([r.token_times for r in ok_recs]), pcts))
    result.update(latency_stats("e2el", e2el[~np.isnan(e2el)], pcts))
    return result


_LABELS = {
    "completed": "Successful requests",
    "failed": "Failed requests",
    "aborted": "Aborted requests",
    "duration_s": "Duration (s)",
    "total_input_tokens": "Total input tokens",
    "total_output_tokens": "Total generated tokens",
    "request_throughput": "Request throughput (req/s)",
    "request_goodput": "Request goodput (req/s)",
    "slo_attainment": "SLO attainment",
    "output_throughput": "Output token throughput (tok/s)",
    "total_token_throughput": "Total token throughput (tok/s)",
}
_TITLES = {"ttft": "Time to First Token", "tpot": "Time per Output Token (excl. 1st token)",
           "itl": "Inter-token Latency", "e2el": "End-to-end Latency"}


def format_table(metrics: Mapping[str, float], width: int = 50) -> str:
    """Render a summarize() dict as vLLM-style text lines; the caller decides where it goes.

    Written out rather than with a table library on purpose: it reproduces `vllm bench serve`'s
    "Serving Benchmark Result" block line for line, which users diff and grep side by side."""

    def fmt(v: float) -> str:
        return str(v) if isinstance(v, (int, np.integer)) else f"{v:.2f}"

    lines = [" Serving Benchmark Result ".center(width, "=")]
    lines += [f"{label + ':':<40}{fmt(metrics[k]):>{width - 40}}" for k, label in _LABELS.items()
              if k in metrics]
    for name in LATENCIES:
        keys = [k for k in metrics if k.endswith(f"_{name}_ms")]
        if not keys:
            continue
        lines.append(f" {_TITLES[name]} ".center(width, "-"))
        for k in keys:
            stat = k[: -len(f"_{name}_ms")]
            label = f"{stat.capitalize() if not stat.startswith('p') else stat.upper()} {name.upper()} (ms):"
            lines.append(f"{label:<40}{fmt(metrics[k]):>{width - 40}}")
    lines.append("=" * width)
    return "\n".join(lines)
