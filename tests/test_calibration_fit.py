"""calibration.fit: recovering known coefficients, error reports, and the errors that name a feature."""
import json
from dataclasses import asdict

import numpy as np
import pytest

from calibration.fit import (
    FitError,
    fit_idle,
    fit_samples,
    fit_steps,
    fit_streams,
    fit_transfer,
    non_decreasing,
    solve_relative,
    to_profile,
)
from calibration.samples import (
    IdleSample,
    ProfileSamples,
    SamplesError,
    StepSample,
    StreamSample,
    TransferSample,
)
from core_api.step import StepFeatures
from sim.cost_model import FittedCostModel
from sim.profile import CostProfile, TokenCurve

TRUE = {"const": 3e-4, "prefill_tokens": 3.5e-5, "prefill_seqs": 2e-5, "prefill_attn": 2.5e-8,
        "prefill_context": 8e-8, "decode_seqs": 1e-5, "decode_context": 9e-8, "sampled": 9e-5}
TRUE_LINK = (6e-4, 1e9)  # latency s, bandwidth B/s


def synthetic_steps(rng, noise=0.02, coef=TRUE, kinds=("prefill", "decode", "mixed")):
    """Step samples on a grid like the profiler's, timed by a known FittedCostModel plus noise."""
    model = FittedCostModel(coef)
    feats = []
    if "prefill" in kinds:
        for n in (1, 16, 64, 128, 256, 512):
            for c in (0, 128, 512, 1536):
                for k, sample in ((1, True), (1, False), (3, True)):
                    feats.append(("prefill", StepFeatures(prefill_tokens=k * n, prefill_seqs=k,
                                                          prefill_attn=k * n * (c + n / 2), prefill_context=k * (c + n),
                                                          sampled=k * sample)))
    if "decode" in kinds:
        for b in (1, 2, 4, 8, 16, 32, 64):
            for ctx in (16, 128, 512, 2048):
                feats.append(("decode", StepFeatures(decode_seqs=b, decode_context=b * ctx, sampled=b)))
    if "mixed" in kinds:
        for b, ctx in ((4, 128), (16, 512), (48, 64)):
            for n, c in ((1, 256), (32, 0), (128, 256), (320, 0)):
                for sample in (True, False):
                    feats.append(("mixed", StepFeatures(prefill_tokens=n, prefill_seqs=1, prefill_attn=n * (c + n / 2),
                                                        prefill_context=c + n, decode_seqs=b, decode_context=b * ctx,
                                                        sampled=b + sample)))
    out = []
    for i, (kind, f) in enumerate(feats):
        t = model.step_time(f) * (1 + noise * rng.standard_normal())
        out.append(StepSample(kind=kind, label=f"{kind} {i}", time_s=t, times_s=[t],
                              features={k: v for k, v in asdict(f).items() if v}))
    return out


def synthetic_transfers(rng, noise=0.02):
    lat, bw = TRUE_LINK
    return [TransferSample(pages=p, nbytes=p * 8192, time_s=(lat + p * 8192 / bw) * (1 + noise * rng.standard_normal()))
            for p in (1, 2, 4, 8, 16, 32, 64, 128, 256)]


def samples_file(rng, **kw) -> ProfileSamples:
    return ProfileSamples(hardware="test cpu", model="tiny-llama", dtype="fp32", page_size=16, kv_bytes_per_token=512,
                          engine_version="test", created="2025-01-01", steps=synthetic_steps(rng, **kw),
                          transfers=synthetic_transfers(rng))


@pytest.mark.parametrize("method", ["nnls", "robust"])
def test_fit_recovers_known_coefficients_from_noisy_samples(method):
    rng = np.random.default_rng(0)
    fit = fit_steps(synthetic_steps(rng, noise=0.02), method=method, seed=1, form="linear")
    for name, true in TRUE.items():
        assert fit.coefficients[name] == pytest.approx(true, rel=0.15), name
    assert fit.errors["overall"] < 0.03  # held out: about the injected 2% noise
    assert set(fit.errors) >= {"overall", "prefill", "decode", "mixed", "feature:decode_context"}
    assert fit.counts["test"] > 0 and fit.counts["train"] > fit.counts["test"]


def test_exact_samples_give_exact_coefficients():
    fit = fit_steps(synthetic_steps(np.random.default_rng(0), noise=0.0), form="linear")
    for name, true in TRUE.items():
        assert fit.coefficients[name] == pytest.approx(true, rel=1e-6), name
    assert fit.errors["overall"] < 1e-9


def test_robust_fit_shrugs_off_outliers():
    rng = np.random.default_rng(3)
    steps = synthetic_steps(rng, noise=0.01)
    for s in steps[::15]:  # a neighbour's burst tripled a few medians
        s.time_s *= 3
    plain = fit_steps(steps, method="nnls", form="linear")
    robust = fit_steps(steps, method="robust", form="linear")
    err = lambda f: np.mean([abs(f.coefficients[k] / v - 1) for k, v in TRUE.items()])
    assert err(robust) < err(plain)
    assert robust.coefficients["decode_context"] == pytest.approx(TRUE["decode_context"], rel=0.1)


def test_coefficients_are_never_negative():
    x = np.array([[1.0, 1.0], [1.0, 2.0], [1.0, 3.0]])
    y = np.array([3.0, 2.0, 1.0])  # decreasing with the feature: its cost clamps at 0
    c = solve_relative(x, y)
    assert (c >= 0).all() and c[1] == 0.0


def test_transfer_fit_recovers_latency_and_bandwidth():
    link = fit_transfer(synthetic_transfers(np.random.default_rng(0), noise=0.01)).link
    assert link.latency_s == pytest.approx(TRUE_LINK[0], rel=0.1)
    assert link.bandwidth_Bps == pytest.approx(TRUE_LINK[1], rel=0.1)


def test_too_few_samples_names_the_feature():
    steps = synthetic_steps(np.random.default_rng(0), kinds=("prefill",))
    with pytest.raises(FitError, match="decode_seqs.*0 training sample"):
        fit_steps(steps)
    fit = fit_steps(steps, names=("const", "prefill_tokens", "prefill_seqs", "prefill_attn", "prefill_context",
                                  "sampled"))
    assert "decode_seqs" not in fit.coefficients


def test_samples_older_than_prefill_context_name_it():
    steps = synthetic_steps(np.random.default_rng(0))
    for s in steps:
        s.features.pop("prefill_context", None)
    with pytest.raises(FitError, match="prefill_context.*0 training sample"):
        fit_steps(steps)


def test_features_the_grid_cannot_separate_are_named():
    steps = synthetic_steps(np.random.default_rng(0), kinds=("decode",))  # sampled == decode_seqs throughout
    with pytest.raises(FitError, match="cannot tell apart 'decode_seqs', 'sampled'"):
        fit_steps(steps, names=("const", "decode_seqs", "decode_context", "sampled"), form="linear")


def test_transfer_needs_several_sizes():
    one = [TransferSample(pages=4, nbytes=4096, time_s=1e-3)] * 5
    with pytest.raises(FitError, match="transfer model: 1 distinct"):
        fit_transfer(one)


def test_profile_from_fit_round_trips_and_describes_itself(tmp_path):
    samples = samples_file(np.random.default_rng(0))
    fit = fit_samples(samples)
    profile = to_profile(samples, fit)
    path = tmp_path / "p.json"
    profile.save(path)
    loaded = CostProfile.load(path)
    assert loaded.coefficients == pytest.approx(fit.coefficients)
    assert loaded.fit_error["overall"] == pytest.approx(fit.errors["overall"])
    assert loaded.transfer.bandwidth_Bps == pytest.approx(TRUE_LINK[1], rel=0.1)
    assert loaded.sample_count == len(samples.steps) + len(samples.transfers)
    assert loaded.environment["kv_bytes_per_token"] == 512
    info = FittedCostModel.from_profile(str(path)).describe()
    assert info["profile"] == str(path) and info["hardware"] == "test cpu" and info["model"] == "tiny-llama"


def test_samples_schema_errors_name_the_field(tmp_path):
    data = json.loads(samples_file(np.random.default_rng(0)).model_dump_json())
    data["steps"][2]["time_s"] = -1.0
    path = tmp_path / "s.json"
    path.write_text(json.dumps(data))
    with pytest.raises(SamplesError, match=r"steps\.2\.time_s"):
        ProfileSamples.load(path)
    data["steps"][2]["time_s"] = 1.0
    data["steps"][3]["features"] = {"prefill_tokenz": 3}
    path.write_text(json.dumps(data))
    with pytest.raises(SamplesError, match="prefill_tokenz"):
        ProfileSamples.load(path)
    path.write_text("{not json")
    with pytest.raises(SamplesError, match="not JSON"):
        ProfileSamples.load(path)


def test_colocated_router_cpu_goes_into_the_profile_not_the_step_model():
    samples = samples_file(np.random.default_rng(0))
    fit = fit_samples(samples)
    with pytest.raises(FitError, match="no router measurement"):
        to_profile(samples, fit, colocated_router=True)
    samples.environment["router"] = {"router_cpu_per_token_s": 5e-5}
    profile = to_profile(samples, fit, colocated_router=True)
    assert profile.router_cpu_per_token_s == 5e-5 and profile.coefficients == fit.coefficients
    assert profile.environment["colocated_router_cpu_per_token_s"] == 5e-5
    assert to_profile(samples, fit).router_cpu_per_token_s is None


def test_control_call_costs_go_into_the_profile_and_out_of_the_link_latency():
    samples = samples_file(np.random.default_rng(0))
    fit = fit_samples(samples)
    assert to_profile(samples, fit).rpc_latency_s is None
    samples.environment["router"] = {"rpc_latency_s": 1e-4, "send_overhead_s": 3e-4, "recv_overhead_s": 2e-4,
                                     "generate_overhead_s": 9e-5, "handoff_generate_overhead_s": 7e-5}
    profile = to_profile(samples, fit)
    assert (profile.rpc_latency_s, profile.send_overhead_s, profile.recv_overhead_s) == (1e-4, 3e-4, 2e-4)
    assert (profile.generate_overhead_s, profile.handoff_generate_overhead_s) == (9e-5, 7e-5)
    assert profile.transfer.latency_s == pytest.approx(fit.transfer.latency_s - 2e-4)
    assert profile.transfer.bandwidth_Bps == fit.transfer.bandwidth_Bps


def test_stream_cost_is_fitted_from_stream_samples_into_the_profile(tmp_path):
    rng = np.random.default_rng(0)
    message, step, token = 1.5e-4, 2e-5, 1e-6
    streams = []
    for b in (1, 4, 16, 64):
        for k in (1, 2, 4):
            extra = (message + step * k + token * b * k) * (1 + 0.01 * rng.standard_normal())
            streams.append(StreamSample(seqs=b, steps=k, tokens=b * k, extra_s=extra, extras_s=[extra] * 2))
    samples = samples_file(rng)
    assert fit_samples(samples).stream is None  # no stream samples: nothing to charge
    samples.streams = streams
    samples.environment["engine"] = {"stream_interval_s": 0.005}
    fit = fit_samples(samples)
    assert (fit.stream.message_s, fit.stream.step_s, fit.stream.token_s) == pytest.approx((message, step, token),
                                                                                          rel=0.1)
    assert fit.stream.interval_s == 0.005 and fit.errors["stream"] < 0.02
    path = tmp_path / "p.json"
    to_profile(samples, fit).save(path)
    assert CostProfile.load(path).stream == fit.stream


def test_a_stream_fit_never_charges_negative_time():
    noise = [StreamSample(seqs=b, steps=k, tokens=b * k, extra_s=x)
             for (b, k), x in zip([(1, 1), (1, 4), (64, 1), (64, 4)], [2e-4, -1e-4, 1e-4, -3e-4])]
    cost, _error = fit_streams(noise, 0.0)
    assert min(cost.message_s, cost.step_s, cost.token_s) >= 0


def test_idle_cost_is_fitted_from_idle_samples_into_the_profile(tmp_path):
    rng = np.random.default_rng(0)
    samples = samples_file(rng)
    assert fit_samples(samples).idle is None  # no idle samples: nothing to charge
    # Per spell, two step sizes; the table takes the median of them (here their mean).
    samples.idle = [IdleSample(idle_s=t, tokens=n, extra_s=x) for t, x32, x256 in
                    [(0.001, 1e-4, 1.4e-4), (0.01, 3e-4, 3.4e-4), (0.1, 8e-4, 1.0e-3)]
                    for n, x in ((32, x32), (256, x256))]
    fit = fit_samples(samples)
    assert fit.idle.idle_s == [0.001, 0.01, 0.1]
    assert fit.idle.extra_s == pytest.approx([1.2e-4, 3.2e-4, 9e-4])
    assert 0 < fit.errors["idle"] < 0.2  # how much the step size mattered
    path = tmp_path / "p.json"
    to_profile(samples, fit).save(path)
    assert CostProfile.load(path).idle == fit.idle


def test_an_idle_fit_never_charges_negative_time_and_noise_alone_gives_none():
    noise = [IdleSample(idle_s=0.001, tokens=32, extra_s=-2e-5), IdleSample(idle_s=0.1, tokens=32, extra_s=3e-4)]
    cost, _ = fit_idle(noise)
    assert cost.extra_s == [0.0, 3e-4]
    assert fit_idle([IdleSample(idle_s=0.001, tokens=32, extra_s=-2e-5)]) == (None, pytest.approx(float("nan"),
                                                                                                 nan_ok=True))


def test_idle_table_never_falls_as_the_spell_grows():
    assert non_decreasing([1.0, 2.0, 3.0]) == [1.0, 2.0, 3.0]
    assert non_decreasing([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    assert non_decreasing([3.0, 2.0, 1.0]) == [2.0, 2.0, 2.0]
    # measured on a VM: 138 us after 1 ms but 26 us after 3 ms is noise, pooled to their mean
    noisy = [IdleSample(idle_s=t, tokens=32, extra_s=x) for t, x in [(0.001, 1.38e-4), (0.003, 2.6e-5), (0.01, 2.48e-4)]]
    cost, _ = fit_idle(noisy)
    assert cost.extra_s == pytest.approx([8.2e-5, 8.2e-5, 2.48e-4])


# ---- the token curve ---------------------------------------------------------------------------
KNEE = TokenCurve(tokens=[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024],
                  seconds=[4e-4, 4.1e-4, 9e-4, 1.1e-3, 1.4e-3, 2.0e-3, 3.2e-3, 5.6e-3, 1.04e-2, 2.0e-2, 3.9e-2])
CURVE_TRUE = {k: v for k, v in TRUE.items() if k not in ("const", "prefill_tokens")}


def knee_steps(noise=0.0):
    """The profiler's grid timed by a model whose cost per token jumps between 2 and 4 tokens, as a
    CPU's matrix kernels do when they change strategy with the batch."""
    steps = synthetic_steps(np.random.default_rng(0), noise=0.0)  # the grid; timed again below
    model = FittedCostModel(CURVE_TRUE, token_curve=KNEE)
    rng = np.random.default_rng(1)
    for s in steps:
        f = StepFeatures(**s.features)
        s.time_s = model.step_time(f) * (1 + noise * rng.standard_normal())
        s.times_s = [s.time_s]
    return steps


def test_the_token_curve_is_recovered_where_a_straight_line_cannot_follow_the_knee():
    curve = fit_steps(knee_steps())
    fitted = dict(zip(curve.token_curve.tokens, curve.token_curve.seconds))
    truth = dict(zip(KNEE.tokens, KNEE.seconds))
    for tokens, seconds in fitted.items():
        assert seconds == pytest.approx(truth[tokens], rel=1e-6), tokens
    for name, true in CURVE_TRUE.items():
        assert curve.coefficients[name] == pytest.approx(true, rel=1e-6), name
    assert "const" not in curve.coefficients and "prefill_tokens" not in curve.coefficients
    assert curve.errors["overall"] < 1e-9
    line = fit_steps(knee_steps(), form="linear")
    assert line.token_curve is None and line.errors["overall"] > 0.03


def test_the_curve_keeps_only_knots_its_samples_pin_down():
    from calibration.token_curve import curve_basis, curve_knots, step_tokens

    steps = [s for s in knee_steps() if StepFeatures(**s.features).total_tokens <= 300]
    tokens = step_tokens(steps)
    knots = curve_knots(tokens, 3)
    assert set(knots) <= {2.0 ** k for k in range(10)} and knots[-1] >= 256
    assert (np.count_nonzero(curve_basis(tokens, knots), axis=0) >= 3).all()
    assert fit_steps(steps).errors["overall"] < 1e-9  # past its last knot the curve goes on along its last segment
    thin_middle = np.array([1.0] * 3 + [2.0] * 3 + [600.0] * 3)
    assert curve_knots(thin_middle, 3) == [1.0, 2.0, 512.0, 1024.0]  # no sample within reach of 4 to 256


def test_a_curve_needs_steps_of_several_sizes():
    same = [StepSample(kind="decode", label=f"d{i}", time_s=1e-3, times_s=[1e-3],
                       features={"decode_seqs": 8, "decode_context": 8 * (100 + i), "sampled": 8}) for i in range(12)]
    with pytest.raises(FitError, match="too few token counts.*--form linear"):
        fit_steps(same, names=("decode_context",))
    with pytest.raises(FitError, match="unknown fit form 'cubic'"):
        fit_steps(knee_steps(), form="cubic")


def test_a_profile_keeps_its_token_curve_and_the_simulator_prices_with_it(tmp_path):
    samples = samples_file(np.random.default_rng(0))
    samples.steps = knee_steps()
    fit = fit_samples(samples)
    path = tmp_path / "p.json"
    to_profile(samples, fit).save(path)
    model = FittedCostModel.from_profile(str(path))
    assert model.describe()["token_curve"]["tokens"] == fit.token_curve.tokens
    truth = FittedCostModel(CURVE_TRUE, token_curve=KNEE)
    for f in (StepFeatures(prefill_tokens=3, prefill_seqs=1, prefill_attn=4.5, prefill_context=3, sampled=1),
              StepFeatures(decode_seqs=48, decode_context=48 * 700, decode_max_context=900, sampled=48),
              StepFeatures(prefill_tokens=300, prefill_seqs=1, prefill_attn=300 * 350, prefill_context=500,
                           decode_seqs=20, decode_context=20 * 64, sampled=21)):
        assert model.step_time(f) == pytest.approx(truth.step_time(f), rel=1e-6)
    assert model.token_seconds(24) == pytest.approx((1.4e-3 + 2.0e-3) / 2)  # between knots: a straight line
    assert model.token_seconds(2048) == pytest.approx(3.9e-2 + (3.9e-2 - 2.0e-2) * 2)  # past them: the last segment
    report = json.loads((tmp_path / "p.json").read_text())
    assert report["token_curve"]["seconds"] == pytest.approx(KNEE.seconds, rel=1e-6)


def test_scaling_a_profile_scales_its_curve_alone_or_with_the_rest(tmp_path):
    samples = samples_file(np.random.default_rng(0))
    samples.steps = knee_steps()
    path = tmp_path / "p.json"
    to_profile(samples, fit_samples(samples)).save(path)
    base = FittedCostModel.from_profile(str(path))
    f = StepFeatures(decode_seqs=8, decode_context=8 * 100, sampled=8)
    assert FittedCostModel.from_profile(str(path), scale=1.1).step_time(f) == pytest.approx(1.1 * base.step_time(f))
    curve_only = FittedCostModel.from_profile(str(path), scale={"token_curve": 2.0})
    assert curve_only.step_time(f) - base.step_time(f) == pytest.approx(base.token_seconds(8))


@pytest.mark.parametrize(("curve", "message"), [
    ({"tokens": [1, 2], "seconds": [1e-3]}, "tokens has 2 knots, seconds 1"),
    ({"tokens": [1, 4, 2], "seconds": [1e-3, 2e-3, 3e-3]}, "strictly increasing"),
    ({"tokens": [1, 2], "seconds": [1e-3, -1e-3]}, "non-negative"),
    ({"tokens": [], "seconds": []}, "token_curve.tokens"),
])
def test_a_malformed_token_curve_is_refused_naming_it(tmp_path, curve, message):
    from sim.profile import ProfileError

    samples = samples_file(np.random.default_rng(0))
    data = json.loads(to_profile(samples, fit_samples(samples)).model_dump_json())
    data["token_curve"] = curve
    with pytest.raises(ProfileError, match=f"token_curve.*{message}|{message}"):
        CostProfile.from_dict(data)
