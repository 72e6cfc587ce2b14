"""GET /metrics: Prometheus text exposition (format 0.0.4) of the router and its engines.

Written out by hand (counters, histograms, gauges are a few lines each) rather than with
prometheus_client, so the server needs no extra dependency and no process-global registry: two
servers in one test process keep separate numbers. Request figures are measured at the router
(HTTP arrival to first token, time per output token after the first), which is what a client
sees; engine gauges come from each engine's last load snapshot, so a scrape costs no RPC.
"""
from __future__ import annotations

import math
from collections import defaultdict

TTFT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
TPOT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
E2E_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum, self.count = 0.0, 0

    def observe(self, value: float) -> None:
        self.sum += value
        self.count += 1
        for i, edge in enumerate(self.buckets):
            if value <= edge:
                self.counts[i] += 1

    def lines(self, name: str, labels: str = "") -> list[str]:
        sep = "," if labels else ""
        out = [f'{name}_bucket{{{labels}{sep}le="{_num(e)}"}} {c}' for e, c in zip(self.buckets, self.counts)]
        out.append(f'{name}_bucket{{{labels}{sep}le="+Inf"}} {self.count}')
        tail = f"{{{labels}}}" if labels else ""
        out += [f"{name}_sum{tail} {_num(self.sum)}", f"{name}_count{tail} {self.count}"]
        return out


class ServeMetrics:
    """What the router records per finished request, and the text /metrics returns."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str], int] = defaultdict(int)  # (endpoint, strategy, status)
        self.rejected: dict[tuple[str, int], int] = defaultdict(int)  # (endpoint, http status)
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)

    def finished(self, run, endpoint: str, end_time: float) -> None:
        self.requests[(endpoint, run.active.name, run.status or "aborted")] += 1
        self.prompt_tokens += run.req.prompt_len
        self.completion_tokens += run.num_tokens
        if run.first_token is not None:
            self.ttft.observe(run.first_token - run.arrival)
            if run.num_tokens > 1:
                self.tpot.observe((run.last_token - run.first_token) / (run.num_tokens - 1))
        self.e2e.observe(end_time - run.arrival)

    def reject(self, endpoint: str, status: int) -> None:
        self.rejected[(endpoint, status)] += 1

    def render(self, router) -> str:
        out: list[str] = []

        def family(name: str, kind: str, help_: str) -> None:
            out.extend([f"# HELP {name} {help_}", f"# TYPE {name} {kind}"])

        family("microserving_requests_total", "counter", "Requests that ran, by endpoint, strategy and status.")
        for (endpoint, strat, status), n in sorted(self.requests.items()):
            out.append(f'microserving_requests_total{{endpoint="{endpoint}",strategy="{_esc(strat)}",'
                       f'status="{status}"}} {n}')
        family("microserving_requests_rejected_total", "counter", "Requests refused before running, by HTTP status.")
        for (endpoint, status), n in sorted(self.rejected.items()):
            out.append(f'microserving_requests_rejected_total{{endpoint="{endpoint}",code="{status}"}} {n}')
        family("microserving_prompt_tokens_total", "counter", "Prompt tokens of requests that ran.")
        out.append(f"microserving_prompt_tokens_total {self.prompt_tokens}")
        family("microserving_generation_tokens_total", "counter", "Output tokens streamed from the engines.")
        out.append(f"microserving_generation_tokens_total {self.completion_tokens}")
        family("microserving_time_to_first_token_seconds", "histogram", "HTTP arrival to first output token.")
        out += self.ttft.lines("microserving_time_to_first_token_seconds")
        family("microserving_time_per_output_token_seconds", "histogram", "Mean gap between output tokens.")
        out += self.tpot.lines("microserving_time_per_output_token_seconds")
        family("microserving_e2e_request_latency_seconds", "histogram", "HTTP arrival to the request's end.")
        out += self.e2e.lines("microserving_e2e_request_latency_seconds")
        family("microserving_requests_in_flight", "gauge", "Requests admitted and not yet ended.")
        out.append(f"microserving_requests_in_flight {len(router.runs)}")
        family("microserving_max_concurrent_requests", "gauge", "The 429 limit.")
        out.append(f"microserving_max_concurrent_requests {router.max_concurrent}")
        family("microserving_strategy_info", "gauge", "The strategy in force (value 1).")
        a = router.active
        out.append(f'microserving_strategy_info{{name="{_esc(a.name)}",version="{a.version}"}} 1')
        family("microserving_strategy_switches_total", "counter", "Strategy switches through the admin route.")
        out.append(f"microserving_strategy_switches_total {router.switches}")
        out += _engine_lines(router.engines)
        return "\n".join(out) + "\n"


_ENGINE_GAUGES = (
    ("up", "1 if the engine answers, 0 if it is down."),
    ("waiting", "Sequences queued for admission."),
    ("running", "Sequences in the running batch."),
    ("receiving", "KV reservations waiting for pages from a peer."),
    ("queued_prefill_tokens", "Prompt tokens not yet prefilled."),
    ("pages_total", "KV pages in the pool."),
    ("pages_free", "KV pages free."),
    ("pages_cached", "KV pages held only by the prefix cache (evictable)."),
    ("pages_used", "KV pages held by sequences or reservations."),
)


def _engine_lines(engines) -> list[str]:
    rows = []
    for e in engines:
        load = e.load()
        rows.append((e.id, {
            "up": int(getattr(e, "down", None) is None), "waiting": load.num_waiting, "running": load.num_running,
            "receiving": load.num_receiving, "queued_prefill_tokens": load.queued_prefill_tokens,
            "pages_total": load.total_pages, "pages_free": load.free_pages, "pages_cached": load.cached_pages,
            "pages_used": load.total_pages - load.free_pages - load.cached_pages}))
    out: list[str] = []
    for key, help_ in _ENGINE_GAUGES:
        name = f"microserving_engine_{key}"
        out += [f"# HELP {name} {help_}", f"# TYPE {name} gauge"]
        out += [f'{name}{{engine="{_esc(eid)}"}} {values[key]}' for eid, values in rows]
    return out


def _esc(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _num(x: float) -> str:
    return "+Inf" if math.isinf(x) else repr(float(x))
