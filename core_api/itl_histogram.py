"""Inter-token latencies of a run without every token's time: a log-bucketed histogram.

A million-request simulation produces about 250 million inter-token gaps; keeping them (or every
token's time) costs gigabytes. Runs that drop per-token times (`token_times: false`) feed each
ok request's gaps here instead. Buckets are geometric, bucket i holding (gamma^(i-1), gamma^i]
with gamma = (1 + ALPHA) / (1 - ALPHA), and report 2 gamma^i / (gamma + 1): within ALPHA (0.1%)
of any value in the bucket. So each percentile, interpolated between the order statistics
around its rank exactly as numpy's default does, is within 0.1% of the exact percentile; the
count, the mean and the standard deviation are exact up to floating-point rounding (moments
merged batch by batch with Chan's formula, which stays accurate when the spread is small).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from core_api.metrics import latency_stats, ordered_sum, percentile_name

ALPHA = 1e-3  # relative accuracy of every reported percentile
_FLUSH = 1 << 16  # pending token times that trigger a vectorized flush


class ItlHistogram:
    def __init__(self, alpha: float = ALPHA) -> None:
        self.alpha = alpha
        self._gamma = (1 + alpha) / (1 - alpha)
        self._log_gamma = math.log(self._gamma)
        self._buckets: dict[int, int] = {}
        self._zeros = 0  # gaps of exactly 0 (two tokens reported at one instant)
        self.count, self._mean, self._m2 = 0, 0.0, 0.0
        self._pending: list[float] = []
        self._pending_lens: list[int] = []

    def add_request(self, times: Sequence[float]) -> None:
        """One request's token times; its consecutive gaps join the histogram."""
        if len(times) > 1:
            self._pending.extend(times)
            self._pending_lens.append(len(times))
            if len(self._pending) >= _FLUSH:
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        lens = np.array(self._pending_lens, dtype=np.int64)
        gaps = np.diff(np.array(self._pending, dtype=np.float64))
        keep = np.ones(gaps.size, dtype=bool)
        keep[np.cumsum(lens)[:-1] - 1] = False  # the gaps between two requests
        gaps = gaps[keep]
        self._pending, self._pending_lens = [], []
        n = gaps.size
        mean = ordered_sum(gaps) / n
        m2 = ordered_sum((gaps - mean) ** 2)
        delta, total = mean - self._mean, self.count + n
        self._m2 += m2 + delta * delta * self.count * n / total
        self._mean += delta * n / total
        self.count = total
        positive = gaps[gaps > 0]
        self._zeros += n - positive.size
        index, counts = np.unique(np.ceil(np.log(positive) / self._log_gamma).astype(np.int64), return_counts=True)
        buckets = self._buckets
        for i, c in zip(index.tolist(), counts.tolist()):
            buckets[i] = buckets.get(i, 0) + c

    def _value_at(self, rank: int, edges: list[tuple[int, float]]) -> float:
        """The estimate of the order statistic of this 0-based rank."""
        if rank < self._zeros:
            return 0.0
        for end, value in edges:
            if rank < end:
                return value
        return edges[-1][1]

    def stats(self, name: str, percentiles: Sequence[float]) -> dict[str, float]:
        """mean, median, std and percentiles in ms, keyed as core_api.metrics.latency_stats keys them."""
        self._flush()
        if not self.count:
            return latency_stats(name, np.empty(0), percentiles)
        edges, end = [], self._zeros  # (rank where the bucket ends, its value), ascending
        for i in sorted(self._buckets):
            end += self._buckets[i]
            edges.append((end, 2 * self._gamma ** i / (self._gamma + 1)))

        def percentile(q: float) -> float:
            h = (self.count - 1) * q / 100  # numpy's default (linear) interpolation between ranks
            lo = math.floor(h)
            a, b = self._value_at(lo, edges), self._value_at(min(lo + 1, self.count - 1), edges)
            return a + (h - lo) * (b - a)

        out = {f"mean_{name}_ms": self._mean * 1000.0, f"median_{name}_ms": percentile(50) * 1000.0,
               f"std_{name}_ms": math.sqrt(self._m2 / self.count) * 1000.0}
        for p in percentiles:
            out[f"{percentile_name(p)}_{name}_ms"] = percentile(p) * 1000.0
        return out
