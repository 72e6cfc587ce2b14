"""Metrics against hand-computed values, goodput, degenerate inputs and speed."""
import math

import numpy as np
import pytest

from core_api.metrics import format_table, latency_stats, ordered_sum, summarize
from core_api.types import RequestRecord


def rec(rid, arrival, times, finish=None, status="ok", prompt_len=10):
    return RequestRecord(rid, arrival, prompt_len, max(len(times), 1), list(times),
                         finish_time=finish if finish is not None else (times[-1] if times else None),
                         status=status)


@pytest.fixture
def three():
    # a: arrives 0, tokens at 0.1, 0.3, 0.6, finish 0.6 -> ttft 100, tpot 250, itl 200/300, e2el 600
    # b: arrives 1, tokens at 1.2, 1.3, finish 1.3       -> ttft 200, tpot 100, itl 100,     e2el 300
    # c: arrives 2, one token at 2.4, finish 2.5         -> ttft 400, no tpot/itl,          e2el 500
    return [rec("a", 0.0, [0.1, 0.3, 0.6]), rec("b", 1.0, [1.2, 1.3]),
            rec("c", 2.0, [2.4], finish=2.5, prompt_len=30)]


def test_hand_computed(three):
    m = summarize(three)
    approx = pytest.approx
    assert m["completed"] == 3 and m["failed"] == 0 and m["aborted"] == 0
    assert m["mean_ttft_ms"] == approx((100 + 200 + 400) / 3)
    assert m["median_ttft_ms"] == approx(200)
    assert m["std_ttft_ms"] == approx(np.std([100, 200, 400]))
    assert m["p99_ttft_ms"] == approx(np.percentile([100, 200, 400], 99))
    assert m["mean_tpot_ms"] == approx(175)  # (250 + 100) / 2; c has one token
    assert m["mean_itl_ms"] == approx(200)  # pooled 200, 300, 100
    assert m["median_itl_ms"] == approx(200)
    assert m["p90_itl_ms"] == approx(np.percentile([200, 300, 100], 90))
    assert m["mean_e2el_ms"] == approx((600 + 300 + 500) / 3)
    assert m["duration_s"] == approx(2.5)
    assert m["total_input_tokens"] == 50 and m["total_output_tokens"] == 6
    assert m["request_throughput"] == approx(3 / 2.5)
    assert m["output_throughput"] == approx(6 / 2.5)
    assert m["total_token_throughput"] == approx(56 / 2.5)
    assert "request_goodput" not in m


def test_itl_never_spans_two_requests():
    # Two back-to-back requests; a gap across them (1.0 -> 5.0) must not appear in ITL.
    m = summarize([rec("a", 0.0, [0.5, 1.0]), rec("b", 4.0, [5.0, 5.5, 6.0])])
    assert m["mean_itl_ms"] == pytest.approx(500) and m["p99_itl_ms"] == pytest.approx(500)


def test_extra_percentiles_named_like_vllm(three):
    m = summarize(three, percentiles=(25, 99.9))
    assert {"p25_ttft_ms", "p99.9_ttft_ms", "p90_ttft_ms", "p99_ttft_ms"} <= m.keys()
    assert m["p25_ttft_ms"] == pytest.approx(150)


def test_goodput(three):
    # ttft <= 250 passes a, b; tpot <= 200 fails a (250), passes c (one token counts as 0).
    three.append(rec("d", 3.0, [], status="failed"))
    m = summarize(three, slos={"ttft_ms": 250})
    assert m["slo_attainment"] == pytest.approx(2 / 4)
    assert m["request_goodput"] == pytest.approx(2 / 2.5)
    m = summarize(three, slos={"ttft_ms": 250, "tpot_ms": 200})
    assert m["slo_attainment"] == pytest.approx(1 / 4)
    m = summarize(three, slos={"tpot_ms": 200, "e2el_ms": 550})
    assert m["slo_attainment"] == pytest.approx(2 / 4)  # b and c
    assert m["failed"] == 1 and m["completed"] == 3


def test_failed_and_aborted_excluded_from_latency(three):
    three += [rec("x", 0.0, [9.0, 10.0], status="aborted"), rec("y", 0.0, [], finish=0.2, status="failed")]
    m = summarize(three)
    assert m["aborted"] == 1 and m["failed"] == 1 and m["completed"] == 3
    assert m["mean_ttft_ms"] == pytest.approx((100 + 200 + 400) / 3)
    assert m["total_output_tokens"] == 6
    assert m["duration_s"] == pytest.approx(10.0)  # the run lasted until the aborted one ended


@pytest.mark.parametrize("records", [[], [rec("f", 0.0, [], finish=1.0, status="failed")]])
def test_empty_or_all_failed(records):
    m = summarize(records, slos={"ttft_ms": 100})
    assert m["completed"] == 0 and m["request_throughput"] == 0.0 and m["output_throughput"] == 0.0
    assert m["request_goodput"] == 0.0 and m["slo_attainment"] == 0.0
    assert math.isnan(m["mean_ttft_ms"]) and math.isnan(m["p99_itl_ms"]) and math.isnan(m["std_e2el_ms"])
    assert "Serving Benchmark Result" in format_table(m)


def test_unknown_slo_lists_known():
    with pytest.raises(ValueError, match="ttft_ms"):
        summarize([], slos={"latency": 1})


def test_format_table(three):
    text = format_table(summarize(three, slos={"ttft_ms": 250}))
    assert "Successful requests:" in text and "Mean TTFT (ms):" in text and "P99 E2EL (ms):" in text
    assert "SLO attainment:" in text and "233.33" in text


def test_many_records_pool_itl_and_attainment():
    rng = np.random.default_rng(0)
    arr = np.cumsum(rng.exponential(0.01, 5_000))
    records = [rec(f"r{i}", a, (a + 0.05 + 0.02 * np.arange(20)).tolist()) for i, a in enumerate(arr)]
    m = summarize(records, slos={"ttft_ms": 60, "tpot_ms": 25})
    assert m["mean_itl_ms"] == pytest.approx(20) and m["slo_attainment"] == 1.0


def test_median_is_numpys_to_the_bit():
    from core_api.metrics import median

    rng = np.random.default_rng(7)
    for n in [*range(1, 40), 1000, 1001]:
        values = rng.lognormal(3, 2, n) * 1000.0
        assert median(values) == float(np.median(values))
    assert np.isnan(median(np.array([1.0, np.nan, 3.0])))


def test_percentiles_are_numpys_to_the_bit():
    from core_api.metrics import percentiles_of

    rng = np.random.default_rng(11)
    ps = [0, 1, 25, 50, 90, 99, 99.9, 100, 33.3]
    for n in [*range(1, 40), 1000, 1001]:
        for values in (rng.lognormal(3, 2, n) * 1000.0, rng.integers(0, 4, n).astype(float)):  # ties too
            assert percentiles_of(values, ps) == [float(v) for v in np.percentile(values, ps)]
    assert all(np.isnan(percentiles_of(np.array([1.0, np.nan, 3.0]), [10, 90])))


def test_sums_add_in_index_order_so_every_numpy_gives_the_same_float():
    """np.sum's pairwise blocks follow numpy's SIMD layout, which moved the last digit of a mean
    between numpy releases; the metrics add in index order instead."""
    values = np.random.default_rng(0).lognormal(size=100_003)
    expected = 0.0
    for v in values.tolist():
        expected += v
    assert ordered_sum(values) == expected and ordered_sum(values[:0]) == 0.0
    stats = latency_stats("x", values, [50])
    ms = values * 1000.0
    mean = ordered_sum(ms) / ms.size
    assert stats["mean_x_ms"] == mean
    assert stats["std_x_ms"] == math.sqrt(ordered_sum((ms - mean) ** 2) / ms.size)
    assert stats["std_x_ms"] == pytest.approx(float(ms.std()), rel=1e-12)
