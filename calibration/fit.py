"""Fit a FittedCostModel (and a transfer model) to profiled samples, and say how good it is.

Step time is modelled as t = const + sum_k c_k * feature_k over StepFeatures, with every
c_k >= 0: a negative per-token cost would be physically meaningless, and would let the fit buy
accuracy on the grid with nonsense in extrapolation. The fit minimises RELATIVE error
((predicted - measured) / measured), not absolute: step times span three orders of magnitude
(a lone decode vs a 2k-token prefill) and an absolute fit would ignore the small steps, which
are exactly the decode steps that set TPOT. Two solvers:

- "nnls": bounded linear least squares (scipy.optimize.lsq_linear) on the relative residuals;
- "robust": then scipy.optimize.least_squares with loss="soft_l1" from that start, so a few
  samples disturbed by a noisy neighbour (CPU timing) pull less.

By default (`form="curve"`) const and prefill_tokens give way to a token curve, the step's time
as a piecewise-linear function of the tokens it computes (calibration.token_curve says why);
`form="linear"` fits the straight line.

Samples are split (seeded, stratified by step kind) into a training part and a held-out part;
the errors reported (and stored in the profile's fit_error) are MAPE on the held-out part, per
step kind and overall, plus per feature over the held-out samples where that feature is active.

Transfers: t = latency + bytes / bandwidth, the same bounded relative fit on two columns.

Which time stands for a grid point (`statistic`): the mean of its repeats (default), the
profiler's median, or a 10%-trimmed mean between the two. The simulator sums step times, so a
point stands for its mean: step times are skewed (over the shipped CPU samples the mean is 1.7%
above the median on average, 2.5% for mixed steps), and fitting medians left every engine of a
validation run 2-5% slower than predicted (re-simulating one validation against its own real runs:
median error 6.8% with medians, 3.5% with means). The median is robust to a neighbour's bursts,
which the profile's rounds and its foreign-CPU check guard against instead.

A coefficient the samples cannot determine (too few samples where its feature is non-zero, or
a feature that is a linear combination of others on this grid) is an error naming it: a silent
zero would make the simulator wrong exactly where the grid was thin.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
import statistics
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import least_squares, lsq_linear

from calibration.fit_error import FitError
from calibration.samples import (
    STEP_KINDS,
    IdleSample,
    ProfileSamples,
    StepSample,
    StreamSample,
    TransferSample,
)
from calibration.token_curve import curve_basis, curve_knots, step_tokens
from sim.idle_cost import IdleCost
from sim.network import LinkSpec
from sim.profile import KNOWN_COEFFICIENTS, CostProfile, TokenCurve
from sim.stream_cost import StreamCost

DEFAULT_COEFFICIENTS = KNOWN_COEFFICIENTS  # const + every StepFeatures field
FORMS = ("curve", "linear")
DEFAULT_FORM = "curve"
CURVE_REPLACES = ("const", "prefill_tokens")  # what the token curve stands for
STATISTICS = ("median", "mean", "trimmed")
DEFAULT_STATISTIC = "mean"
MIN_SAMPLES_PER_FEATURE = 3
METHODS = ("nnls", "robust")
_HINT = {
    "prefill_tokens": "prefill steps",
    "prefill_seqs": "prefill steps with several sequences",
    "prefill_attn": "prefill chunks over cached context",
    "prefill_context": "prefill chunks over several cached context lengths",
    "decode_seqs": "decode batches",
    "decode_context": "decode batches at several context lengths",
    "sampled": "steps that sample (and prefill chunks that do not)",
}


def engine_version() -> str:
    try:
        return importlib.metadata.version("llm-microserving")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class Prediction:
    kind: str  # prefill / decode / mixed / transfer
    label: str
    split: str  # train / test
    measured_s: float
    predicted_s: float

    @property
    def rel_error(self) -> float:
        return (self.predicted_s - self.measured_s) / self.measured_s


@dataclass
class StepFit:
    coefficients: dict[str, float]
    errors: dict[str, float]  # held-out MAPE: overall, per kind, per feature
    train_errors: dict[str, float]
    predictions: list[Prediction]
    counts: dict[str, int]
    token_curve: TokenCurve | None = None


@dataclass
class TransferFit:
    link: LinkSpec
    error: float  # held-out MAPE
    train_error: float
    predictions: list[Prediction]


@dataclass
class FitResult:
    coefficients: dict[str, float]
    token_curve: TokenCurve | None
    transfer: LinkSpec | None
    errors: dict[str, float]  # held-out MAPE: overall, per kind, per feature, transfer
    train_errors: dict[str, float]
    predictions: list[Prediction] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    stream: StreamCost | None = None
    idle: IdleCost | None = None


# ---- step model -------------------------------------------------------------------------
def design_matrix(samples: list[StepSample], names: tuple[str, ...]) -> np.ndarray:
    cols = []
    for name in names:
        if name == "const":
            cols.append(np.ones(len(samples)))
        else:
            cols.append(np.array([s.features.get(name, 0.0) for s in samples], dtype=np.float64))
    return np.stack(cols, axis=1) if cols else np.empty((len(samples), 0))


def split_indices(groups: list[str], holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded split stratified by group: about `holdout` of each group is held out, never all
    of it (a group of one sample stays in training)."""
    if not 0 <= holdout < 1:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for g in sorted(set(groups)):
        idx = np.array([i for i, x in enumerate(groups) if x == g])
        idx = idx[rng.permutation(idx.size)]
        k = min(round(holdout * idx.size), idx.size - 1)
        test.extend(idx[:k].tolist())
        train.extend(idx[k:].tolist())
    return np.array(sorted(train), dtype=int), np.array(sorted(test), dtype=int)


def check_identifiable(X: np.ndarray, names: tuple[str, ...], min_samples: int = MIN_SAMPLES_PER_FEATURE) -> None:
    """Raise FitError naming a coefficient that these (training) samples cannot pin down."""
    if X.shape[0] < len(names) + 1:
        raise FitError(f"too few samples: {X.shape[0]} training samples for {len(names)} coefficients "
                       f"({', '.join(names)}); need at least {len(names) + 1}")
    for j, name in enumerate(names):
        if name == "const":
            continue
        active = int(np.count_nonzero(X[:, j]))
        if active < min_samples:
            raise FitError(
                f"too few samples to fit {name!r}: {active} training sample(s) have {name} > 0, need >= "
                f"{min_samples}; profile {_HINT.get(name, 'steps with it')} or leave {name!r} out of the "
                f"coefficients")
    scale = np.abs(X).max(axis=0)
    Xs = X / np.where(scale > 0, scale, 1.0)
    if np.linalg.matrix_rank(Xs) < len(names):
        tied = []
        for j, name in enumerate(names):
            others = np.delete(Xs, j, axis=1)
            coef, *_ = np.linalg.lstsq(others, Xs[:, j], rcond=None)
            if np.linalg.norm(others @ coef - Xs[:, j]) <= 1e-8 * max(1.0, np.linalg.norm(Xs[:, j])):
                tied.append(name)
        raise FitError(f"the samples cannot tell apart {', '.join(map(repr, tied))}: on this grid each is a "
                       f"linear combination of the others; vary them independently or drop one")


def solve_relative(X: np.ndarray, y: np.ndarray, method: str = "nnls") -> np.ndarray:
    """Non-negative c minimising sum(((X c - y) / y)^2) (or its soft-L1 version for 'robust')."""
    if method not in METHODS:
        raise ValueError(f"unknown fit method {method!r}; known: {', '.join(METHODS)}")
    A = X / y[:, None]
    scale = np.abs(A).max(axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    As = A / scale  # unit-scale columns: prefill_attn reaches 1e6 where const is 1
    b = np.ones(len(y))
    sol = lsq_linear(As, b, bounds=(0.0, np.inf), method="bvls", tol=1e-12).x
    if method == "robust":
        sol = least_squares(lambda c: As @ c - b, np.maximum(sol, 1e-12), bounds=(0.0, np.inf),
                            loss="soft_l1", f_scale=0.05, x_scale="jac").x
    return sol / scale


def point_time(times: list[float], median: float, statistic: str) -> float:
    if statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {statistic!r}; known: {', '.join(STATISTICS)}")
    if statistic == "median" or not times:
        return median
    xs = np.sort(np.asarray(times))
    if statistic == "trimmed":
        k = int(0.1 * xs.size)
        xs = xs[k: xs.size - k] if xs.size - 2 * k > 0 else xs
    return float(xs.mean())


def mape(pred: np.ndarray, meas: np.ndarray) -> float:
    return float(np.mean(np.abs(pred - meas) / meas)) if meas.size else float("nan")


def fit_steps(samples: list[StepSample], names: tuple[str, ...] = DEFAULT_COEFFICIENTS, method: str = "nnls",
              holdout: float = 0.25, seed: int = 0, min_samples: int = MIN_SAMPLES_PER_FEATURE,
              statistic: str = DEFAULT_STATISTIC, form: str = DEFAULT_FORM) -> StepFit:
    """Coefficients (and the token curve), held-out and training MAPE (overall, per kind, per
    feature), predictions."""
    unknown = sorted(set(names) - set(KNOWN_COEFFICIENTS))
    if unknown:
        raise FitError(f"unknown coefficient(s) {unknown}; known: {', '.join(KNOWN_COEFFICIENTS)}")
    if form not in FORMS:
        raise FitError(f"unknown fit form {form!r}; known: {', '.join(FORMS)}")
    if not samples:
        raise FitError("no step samples to fit")
    names = tuple(n for n in KNOWN_COEFFICIENTS if n in names and (form == "linear" or n not in CURVE_REPLACES))
    X = design_matrix(samples, names)
    y = np.array([point_time(s.times_s, s.time_s, statistic) for s in samples])
    train, test = split_indices([s.kind for s in samples], holdout, seed)
    knots: list[float] = []
    if form == "curve":
        tokens = step_tokens(samples)
        knots = curve_knots(tokens[train], min_samples)
        X = np.hstack([curve_basis(tokens, knots), X])
    columns = (*(f"token curve at {k:g}" for k in knots), *names)
    check_identifiable(X[train], columns, min_samples)
    c = solve_relative(X[train], y[train], method)
    pred = X @ c
    kinds = np.array([s.kind for s in samples])

    def errors(idx: np.ndarray) -> dict[str, float]:
        out = {"overall": mape(pred[idx], y[idx])} if idx.size else {}
        for k in STEP_KINDS:
            sel = idx[kinds[idx] == k]
            if sel.size:
                out[k] = mape(pred[sel], y[sel])
        for j, name in enumerate(names, start=len(knots)):
            sel = idx[X[idx, j] != 0] if name != "const" else np.array([], dtype=int)
            if sel.size:
                out[f"feature:{name}"] = mape(pred[sel], y[sel])
        return out

    in_test = np.zeros(len(samples), dtype=bool)
    in_test[test] = True
    preds = [Prediction(s.kind, s.label, "test" if in_test[i] else "train", float(y[i]), float(pred[i]))
             for i, s in enumerate(samples)]
    coefficients = {n: float(v) for n, v in zip(names, c[len(knots):])}
    curve = TokenCurve(tokens=knots, seconds=[float(v) for v in c[:len(knots)]]) if knots else None
    return StepFit(coefficients, errors(test), errors(train), preds, {"train": int(train.size), "test": int(test.size)},
                   curve)


# ---- transfer model ----------------------------------------------------------------------
def fit_transfer(samples: list[TransferSample], holdout: float = 0.25, seed: int = 0,
                 statistic: str = DEFAULT_STATISTIC) -> TransferFit:
    """LinkSpec(latency, bandwidth), held-out and training MAPE, predictions."""
    sizes = {s.nbytes for s in samples}
    if len(sizes) < 3:
        raise FitError(f"too few samples to fit the transfer model: {len(sizes)} distinct transfer size(s), "
                       f"need >= 3")
    X = np.array([[1.0, float(s.nbytes)] for s in samples])
    y = np.array([point_time(s.times_s, s.time_s, statistic) for s in samples])
    train, test = split_indices(["transfer"] * len(samples), holdout, seed)
    latency, per_byte = solve_relative(X[train], y[train])
    if per_byte <= 0:
        raise FitError("transfer time does not grow with size on these samples: cannot fit a bandwidth; "
                       "profile larger transfers")
    pred = X @ np.array([latency, per_byte])
    in_test = set(test.tolist())
    preds = [Prediction("transfer", f"{s.pages} pages ({s.nbytes} B)", "test" if i in in_test else "train",
                        float(y[i]), float(pred[i])) for i, s in enumerate(samples)]
    link = LinkSpec(latency_s=float(latency), bandwidth_Bps=float(1.0 / per_byte))
    return TransferFit(link, mape(pred[test], y[test]), mape(pred[train], y[train]), preds)


# ---- the whole profile -------------------------------------------------------------------
def fit_samples(samples: ProfileSamples, names: tuple[str, ...] = DEFAULT_COEFFICIENTS, method: str = "nnls",
                holdout: float = 0.25, seed: int = 0, min_samples: int = MIN_SAMPLES_PER_FEATURE,
                statistic: str = DEFAULT_STATISTIC, form: str = DEFAULT_FORM) -> FitResult:
    steps = fit_steps(samples.steps, names, method, holdout, seed, min_samples, statistic, form)
    result = FitResult(steps.coefficients, steps.token_curve, None, steps.errors, steps.train_errors,
                       steps.predictions, steps.counts)
    if samples.transfers:
        t = fit_transfer(samples.transfers, holdout, seed, statistic)
        result.transfer = t.link
        result.errors["transfer"], result.train_errors["transfer"] = t.error, t.train_error
        result.predictions += t.predictions
        result.counts["transfers"] = len(samples.transfers)
    if samples.streams:
        interval = float((samples.environment.get("engine") or {}).get("stream_interval_s", 0.0))
        result.stream, result.errors["stream"] = fit_streams(samples.streams, interval)
        result.train_errors["stream"] = result.errors["stream"]
        result.counts["streams"] = len(samples.streams)
    if samples.idle:
        result.idle, result.errors["idle"] = fit_idle(samples.idle)
        result.train_errors["idle"] = result.errors["idle"]
        result.counts["idle"] = len(samples.idle)
    for k in STEP_KINDS:
        result.counts[k] = sum(s.kind == k for s in samples.steps)
    return result


def fit_idle(samples: list[IdleSample]) -> tuple[IdleCost | None, float]:
    """The idle cost table: per idle spell, the median over step sizes of the measured extras,
    made non-decreasing in the spell's length (a longer idle leaves the core no warmer; where a
    shorter spell measured more, both get their mean: pool-adjacent-violators) and floored at 0 (a
    step after idling is never faster; a negative median is noise). Its error is how much the step
    size and that noise mattered: the MAPE of the table against the samples it pools (those above
    zero). None when no spell measured an extra at all."""
    by_idle: dict[float, list[float]] = {}
    for s in samples:
        by_idle.setdefault(s.idle_s, []).append(s.extra_s)
    idle = sorted(by_idle)
    extra = [max(0.0, x) for x in non_decreasing([statistics.median(by_idle[t]) for t in idle])]
    if not any(extra):
        return None, float("nan")
    cost = IdleCost(idle_s=idle, extra_s=extra)
    pooled = [(cost.seconds(s.idle_s), s.extra_s) for s in samples if s.extra_s > 0]
    return cost, mape(np.array([p for p, _ in pooled]), np.array([y for _, y in pooled])) if pooled else float("nan")


def fit_streams(samples: list[StreamSample], interval_s: float) -> tuple[StreamCost, float]:
    """message_s + step_s * steps + token_s * tokens per message, non-negative least squares over
    the stream samples, and its MAPE over them (three coefficients on a dozen noisy points: no
    hold-out; the samples whose median came out non-positive, pure noise, are left out of it)."""
    a = np.array([[1.0, s.steps, s.tokens] for s in samples])
    y = np.array([s.extra_s for s in samples])
    message, step, token = lsq_linear(a, y, bounds=(0.0, np.inf)).x
    cost = StreamCost(interval_s=interval_s, message_s=float(message), step_s=float(step), token_s=float(token))
    ok = y > 0
    return cost, mape(a[ok] @ np.array([message, step, token]), y[ok])


def non_decreasing(values: list[float]) -> list[float]:
    """The closest non-decreasing sequence in least squares (isotonic regression by pooling
    adjacent violators): a run that decreases is replaced by its mean."""
    blocks: list[list[float]] = []  # [sum, count] of each pooled run
    for v in values:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
            total, count = blocks.pop()
            blocks[-1][0] += total
            blocks[-1][1] += count
    return [total / count for total, count in blocks for _ in range(int(count))]


def to_profile(samples: ProfileSamples, fit: FitResult, colocated_router: bool = False) -> CostProfile:
    """The CostProfile the simulator loads. Held-out errors go into fit_error (NaN ones are
    dropped: the schema refuses non-finite numbers). The environment records the real engine's
    KV bytes per token, which the transfer bandwidth is stated in. With control-call costs in the
    samples (calibration.cluster_profile), the profile carries rpc_latency_s and send_overhead_s,
    and its link latency is the handoff's less the two round trips the simulator charges apart.

    colocated_router: for hosts where the router shares the engines' cores, carry the router's
    measured CPU per streamed token (calibration.cluster_profile) as router_cpu_per_token_s, which
    the simulator takes from every engine in equal shares (sim.host); the step coefficients stay the engine's."""
    env = {**samples.environment, "kv_bytes_per_token": samples.kv_bytes_per_token,
           "samples_created": samples.created}
    coefficients = dict(fit.coefficients)
    router = samples.environment.get("router") or {}
    rpc, send_overhead, recv_overhead, generate_overhead, handoff_generate_overhead = (router.get(k) for k in (
        "rpc_latency_s", "send_overhead_s", "recv_overhead_s", "generate_overhead_s", "handoff_generate_overhead_s"))
    transfer = fit.transfer
    if transfer is not None and rpc is not None:
        # A measured handoff holds the prep_recv and remote_send round trips, which the simulator
        # charges as rpc_latency_s: the link keeps the rest.
        transfer = transfer.model_copy(update={"latency_s": max(0.0, transfer.latency_s - 2 * rpc)})
    if colocated_router:
        if "router_cpu_per_token_s" not in router:
            raise FitError("--colocated-router: the samples hold no router measurement (profile with transfers on)")
        env["colocated_router_cpu_per_token_s"] = router["router_cpu_per_token_s"]
    return CostProfile(
        hardware=samples.hardware, model=samples.model, dtype=samples.dtype, tp=samples.tp,
        page_size=samples.page_size, engine_version=samples.engine_version or engine_version(),
        coefficients=coefficients, token_curve=fit.token_curve, transfer=transfer, rpc_latency_s=rpc, send_overhead_s=send_overhead,
        recv_overhead_s=recv_overhead, generate_overhead_s=generate_overhead,
        handoff_generate_overhead_s=handoff_generate_overhead,
        router_cpu_per_token_s=router["router_cpu_per_token_s"] if colocated_router else None, stream=fit.stream,
        idle=fit.idle,
        fit_error={k: v for k, v in fit.errors.items() if np.isfinite(v)},
        sample_count=len(samples.steps) + len(samples.transfers),
        created=_dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        environment=env,
    )
