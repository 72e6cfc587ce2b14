"""GET /metrics: Prometheus exposition of the router and its engines, with prometheus_client.

vLLM's metric names and labels where the meaning is the same (`vllm:num_requests_running`,
`vllm:num_requests_waiting`, `vllm:kv_cache_usage_perc`, `vllm:time_to_first_token_seconds`,
`vllm:inter_token_latency_seconds`, `vllm:e2e_request_latency_seconds`,
`vllm:request_success_total{finished_reason}`, token counters, all labelled `model_name`), so
existing vLLM dashboards work; `microserving_*` for what vLLM has no name for (strategy, per-engine
gauges, rejections). Each server has its own CollectorRegistry (never the process-global one), so
two servers in one process keep separate numbers. Request figures are measured at the router,
which is what a client sees; engine gauges come from each engine's last load snapshot, so a scrape
costs no RPC.
"""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily

# vLLM's buckets for these families, so dashboards' bucket queries line up.
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
                20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
               40.0, 80.0)
E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
               480.0, 960.0, 1920.0, 7680.0)
FINISHED_REASONS = ("stop", "length", "abort")


class ServeMetrics:
    """What the router records per finished request, and the text /metrics returns."""

    def __init__(self) -> None:
        self.model_name = ""
        self.registry = CollectorRegistry(auto_describe=True)
        r, m = self.registry, ["model_name"]
        self.success = Counter("vllm:request_success", "Finished requests by finish reason.",
                               m + ["finished_reason"], registry=r)
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Prompt tokens of requests that ran.", m, registry=r)
        self.generation_tokens = Counter("vllm:generation_tokens", "Output tokens streamed from the engines.", m,
                                         registry=r)
        self.ttft = Histogram("vllm:time_to_first_token_seconds", "HTTP arrival to first output token.", m,
                              buckets=TTFT_BUCKETS, registry=r)
        self.itl = Histogram("vllm:inter_token_latency_seconds", "Gap between consecutive output tokens.", m,
                             buckets=ITL_BUCKETS, registry=r)
        self.tpot = Histogram("vllm:request_time_per_output_token_seconds",
                              "Mean gap between output tokens, per request.", m, buckets=ITL_BUCKETS, registry=r)
        self.e2e = Histogram("vllm:e2e_request_latency_seconds", "HTTP arrival to the request's end.", m,
                             buckets=E2E_BUCKETS, registry=r)
        self.requests = Counter("microserving_requests", "Requests that ran, by endpoint, strategy and status.",
                                ["endpoint", "strategy", "status"], registry=r)
        self.rejected = Counter("microserving_requests_rejected", "Requests refused before running, by HTTP status.",
                                ["endpoint", "code"], registry=r)
        self._router = None
        r.register(_LiveGauges(self))

    def attach(self, router, model_name: str) -> None:
        """The router whose state the gauges read at each scrape, and the served model's name.
        Every labelled series exists from the start (at zero), as dashboards expect."""
        self._router, self.model_name = router, model_name
        for family in (self.prompt_tokens, self.generation_tokens, self.ttft, self.itl, self.tpot, self.e2e):
            family.labels(model_name)
        for reason in FINISHED_REASONS:
            self.success.labels(model_name, reason)

    def finished(self, run, endpoint: str, end_time: float) -> None:
        model = self.model_name
        self.requests.labels(endpoint, run.active.name, run.status or "aborted").inc()
        reason = run.finish_reason if run.status == "ok" else "abort"
        self.success.labels(model, reason if reason in FINISHED_REASONS else "stop").inc()
        self.prompt_tokens.labels(model).inc(run.req.prompt_len)
        self.generation_tokens.labels(model).inc(run.num_tokens)
        if run.first_token is not None:
            self.ttft.labels(model).observe(run.first_token - run.arrival)
            for gap in run.token_gaps:
                self.itl.labels(model).observe(gap)
            if run.num_tokens > 1:
                self.tpot.labels(model).observe((run.last_token - run.first_token) / (run.num_tokens - 1))
        self.e2e.labels(model).observe(end_time - run.arrival)

    def reject(self, endpoint: str, status: int) -> None:
        self.rejected.labels(endpoint, str(status)).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _LiveGauges:
    """Gauges read from the router and the engines' load snapshots at scrape time."""

    def __init__(self, metrics: ServeMetrics) -> None:
        self.metrics = metrics

    def describe(self):
        return []  # families are dynamic (one sample per engine): nothing to check at registration

    def collect(self):
        router = self.metrics._router
        if router is None:
            return
        model = [self.metrics.model_name]
        loads = [(e, e.load()) for e in router.engines]
        running = GaugeMetricFamily("vllm:num_requests_running", "Sequences in the engines' running batches.",
                                    labels=["model_name"])
        running.add_metric(model, sum(load.num_running for _, load in loads))
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Sequences queued for admission on the engines.",
                                    labels=["model_name"])
        waiting.add_metric(model, sum(load.num_waiting for _, load in loads))
        total = sum(load.total_pages for _, load in loads)
        used = sum(load.total_pages - load.free_pages - load.cached_pages for _, load in loads)
        usage = GaugeMetricFamily("vllm:kv_cache_usage_perc", "Fraction of KV pages in use (1 = full).",
                                  labels=["model_name"])
        usage.add_metric(model, used / total if total else 0.0)
        yield from (running, waiting, usage)
        yield _gauge("microserving_requests_in_flight", "Requests admitted and not yet ended.", len(router.runs))
        yield _gauge("microserving_max_concurrent_requests", "The 429 limit.", router.max_concurrent)
        info = GaugeMetricFamily("microserving_strategy_info", "The strategy in force (value 1).",
                                 labels=["name", "version"])
        info.add_metric([router.active.name, str(router.active.version)], 1)
        yield info
        yield _gauge("microserving_strategy_switches_total", "Strategy switches through the admin route.",
                     router.switches)
        for key, help_, value in _ENGINE_GAUGES:
            family = GaugeMetricFamily(f"microserving_engine_{key}", help_, labels=["engine"])
            for engine, load in loads:
                family.add_metric([str(engine.id)], value(engine, load))
            yield family


def _gauge(name: str, help_: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_, value=value)


_ENGINE_GAUGES = (
    ("up", "1 if the engine answers, 0 if it is down.", lambda e, ld: int(getattr(e, "down", None) is None)),
    ("waiting", "Sequences queued for admission.", lambda e, ld: ld.num_waiting),
    ("running", "Sequences in the running batch.", lambda e, ld: ld.num_running),
    ("receiving", "KV reservations waiting for pages from a peer.", lambda e, ld: ld.num_receiving),
    ("queued_prefill_tokens", "Prompt tokens not yet prefilled.", lambda e, ld: ld.queued_prefill_tokens),
    ("pages_total", "KV pages in the pool.", lambda e, ld: ld.total_pages),
    ("pages_free", "KV pages free.", lambda e, ld: ld.free_pages),
    ("pages_cached", "KV pages held only by the prefix cache (evictable).", lambda e, ld: ld.cached_pages),
    ("pages_used", "KV pages held by sequences or reservations.",
     lambda e, ld: ld.total_pages - ld.free_pages - ld.cached_pages),
)
