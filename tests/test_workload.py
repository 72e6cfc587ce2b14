"""Synthetic workloads: determinism, arrival statistics, shared prefixes, validation, transforms."""

import numpy as np
import pytest
from pydantic import ValidationError

from core_api.workload import ArrivalSpec, LengthDist, PrefixSpec, Workload, WorkloadSpec, generate


def spec(**kw):
    base = {"num_requests": 200, "prompt_len": LengthDist(kind="uniform", low=5, high=50),
            "output_len": LengthDist(kind="normal", mean=20, std=5), "seed": 7}
    return WorkloadSpec(**{**base, **kw})


def test_same_seed_identical_different_seed_differs():
    s = spec(prefix=PrefixSpec(num_groups=3, prefix_len=8, fraction=0.5))
    a, b, c = generate(s), generate(s), generate(s.model_copy(update={"seed": 8}))
    for x, y in zip(a, b):
        assert x.id == y.id and x.arrival_time == y.arrival_time and x.prefix_group == y.prefix_group
        assert np.array_equal(x.prompt, y.prompt) and x.sampling == y.sampling
    assert any(not np.array_equal(x.prompt, y.prompt) for x, y in zip(a, c))


def test_request_fields():
    w = generate(spec(vocab_size=100, temperature=0.7))
    assert len(w) == 200 and [r.id for r in w] == [f"r{i}" for i in range(200)]
    assert np.all(np.diff(w.arrival_times) >= 0) and w[0].arrival_time == 0.0
    for r in w:
        assert r.prompt.dtype == np.int32 and 0 <= r.prompt.min() and r.prompt.max() < 100
        assert 5 <= r.prompt_len <= 50 and r.sampling.max_tokens >= 1
        assert r.sampling.ignore_eos and r.sampling.temperature == 0.7


def test_poisson_rate():
    w = generate(spec(num_requests=20_000, arrival=ArrivalSpec(rate=25.0)))
    assert w.mean_rate == pytest.approx(25.0, rel=0.03)
    gaps = np.diff(w.arrival_times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_cv(cv):
    w = generate(spec(num_requests=20_000, arrival=ArrivalSpec(process="gamma", rate=10.0, cv=cv)))
    gaps = np.diff(w.arrival_times)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.06)
    assert w.mean_rate == pytest.approx(10.0, rel=0.06)


def test_infinite_rate_is_a_burst():
    w = generate(spec(arrival=ArrivalSpec(rate=float("inf"))))
    assert np.all(w.arrival_times == 0.0)


def test_rate_sweep_keeps_prompts():
    a = generate(spec(arrival=ArrivalSpec(rate=1.0)))
    b = generate(spec(arrival=ArrivalSpec(rate=4.0)))
    assert np.allclose(a.arrival_times, 4 * b.arrival_times)
    assert all(np.array_equal(x.prompt, y.prompt) for x, y in zip(a, b))


def test_prefix_groups_share_prefix():
    w = generate(spec(num_requests=500, prefix=PrefixSpec(num_groups=4, prefix_len=16, fraction=0.6,
                                                          choice="zipf", alpha=1.2)))
    grouped = [r for r in w if r.prefix_group is not None]
    assert 0.5 < len(grouped) / len(w) < 0.7
    heads = {}
    for r in grouped:
        assert r.prefix_len == 16 and r.prompt_len >= 16 + 5
        heads.setdefault(r.prefix_group, r.prompt[:16])
        assert np.array_equal(r.prompt[:16], heads[r.prefix_group])
    assert len(heads) == 4
    assert len({h.tobytes() for h in heads.values()}) == 4
    counts = np.bincount([r.prefix_group for r in grouped])
    assert counts[0] > counts[3]  # zipf favours group 0
    assert all(r.prefix_len == 0 for r in w if r.prefix_group is None)


@pytest.mark.parametrize("kind, params, check", [
    ("fixed", {"value": 7}, lambda x: np.all(x == 7)),
    ("uniform", {"low": 3, "high": 9}, lambda x: x.min() == 3 and x.max() == 9),
    ("normal", {"mean": 2, "std": 10}, lambda x: x.min() >= 1),
    ("lognormal", {"mean": 100, "sigma": 0.5, "max": 300}, lambda x: abs(x.mean() - 100) < 5 and x.max() <= 300),
    ("zipf", {"alpha": 1.5, "high": 1000}, lambda x: x.max() <= 1000 and (x == 1).mean() > 0.3),
])
def test_length_dists(kind, params, check):
    x = LengthDist(kind=kind, **params).sample(np.random.default_rng(0), 5000)
    assert x.min() >= 1 and check(x)


@pytest.mark.parametrize("bad, field", [
    ({"num_requests": 0}, "num_requests"),
    ({"prompt_len": {"kind": "fixed", "value": 0}}, "prompt_len"),
    ({"output_len": {"kind": "fixed", "value": 0}}, "output_len"),
    ({"output_len": {"kind": "uniform", "low": 3}}, "output_len"),
    ({"prompt_len": {"kind": "uniform", "low": 9, "high": 3}}, "prompt_len"),
    ({"prompt_len": {"kind": "fixed", "value": 4, "min": 0}}, "prompt_len"),
    ({"arrival": {"process": "gamma", "rate": -1}}, "rate"),
    ({"arrival": {"process": "weibull"}}, "process"),
    ({"prefix": {"num_groups": 2}}, "prefix_len"),
    ({"prefix": {"prefix_len": 4, "fraction": 1.5}}, "fraction"),
    ({"vocab_size": 1}, "vocab_size"),
    ({"temprature": 0.5}, "temprature"),
    ({"prompt_len": {"kind": "fixed", "value": 10**12}}, "prompt_len.value"),
])
def test_validation_names_field(bad, field):
    with pytest.raises(ValidationError) as err:
        WorkloadSpec(**{"num_requests": 10, **bad})
    assert field in str(err.value)


def test_spec_from_json_roundtrip():
    for s in (spec(prefix=PrefixSpec(prefix_len=4)), spec(arrival=ArrivalSpec(rate=float("inf")))):
        assert WorkloadSpec.model_validate_json(s.model_dump_json()) == s


def test_from_lengths_with_hash_blocks():
    rng = np.random.default_rng(0)
    w = Workload.from_lengths([2.0, 0.0, 1.0], [10, 6, 3], [1, 2, 3], rng, vocab_size=50,
                              prefix_ids=[[7, 8], [7], []], block_size=4)
    assert [r.arrival_time for r in w] == [0.0, 1.0, 2.0] and [r.id for r in w] == ["r0", "r1", "r2"]
    a, none, b = w
    assert none.prefix_group is None and none.prompt_len == 3
    assert a.prefix_len == 4 and b.prefix_len == 8 and b.prompt_len == 10
    assert np.array_equal(a.prompt[:4], b.prompt[:4])
    with pytest.raises(ValueError, match="prompt_len"):
        Workload.from_lengths([0.0], [0], [1], rng)


def test_scaled_to_rate_slice_subsample():
    w = generate(spec(num_requests=1000, arrival=ArrivalSpec(rate=3.0)))
    fast = w.scaled_to_rate(30.0)
    assert fast.mean_rate == pytest.approx(30.0)
    assert np.allclose(fast.arrival_times * 30.0 / w.mean_rate, w.arrival_times)
    assert [r.id for r in fast] == [r.id for r in w] and np.array_equal(fast[5].prompt, w[5].prompt)
    assert w.arrival_times[1] > 0  # the source is untouched
    assert np.all(w.scaled_to_rate(float("inf")).arrival_times == 0.0)
    part = w.slice(10, 20)
    assert len(part) == 10 and part[0].id == "r10"
    sub = w.subsample(100, np.random.default_rng(1))
    assert len(sub) == 100 and np.all(np.diff(sub.arrival_times) >= 0)
    assert len({r.id for r in sub}) == 100
    with pytest.raises(ValueError):
        w.subsample(2000, np.random.default_rng(1))


def test_generate_many_requests_with_prefix_groups():
    s = WorkloadSpec(num_requests=5_000, prompt_len=LengthDist(kind="uniform", low=900, high=1100),
                     output_len=LengthDist(kind="fixed", value=128),
                     prefix=PrefixSpec(num_groups=8, prefix_len=256, fraction=0.5))
    w = generate(s)
    assert len(w) == 5_000
    grouped = [r for r in w if r.prefix_group is not None]
    assert 0.45 < len(grouped) / len(w) < 0.55


def test_an_unbounded_length_tail_stops_at_the_ceiling():
    from core_api.types import MAX_REQUEST_TOKENS
    from core_api.workload import LengthDist

    lengths = LengthDist(kind="lognormal", mean=10**6, sigma=2).sample(np.random.default_rng(0), 2000)
    assert lengths.max() == MAX_REQUEST_TOKENS  # about 1% of these draws lie beyond it
    assert (lengths >= 1).all()
