"""How fast the real engines stepped against what a profile predicts for the very same steps, and
when a validation's comparison is not to be trusted (the machine moved, other processes ran, the
profile came from another machine, the real repeats spread more than the error)."""
from __future__ import annotations

from calibration.validation_report import HEADLINE, MetricComparison, RunSteps
from sim.cost_model import FittedCostModel
from sim.profile import CostProfile

TRUSTED_STEP_DRIFT = 0.05  # steps off the profile by more than this: the plain comparison measures the machine
TRUSTED_FOREIGN_SHARE = 0.05


def step_speed(profile: CostProfile, runs_stats: list[dict[str, dict]],
               waiting: list[dict[str, float]] | None = None) -> dict[str, float]:
    """Per engine, over the real runs: its measured step time over what the profile predicts for
    the same steps (a fitted step model is linear in the features, so sums give the prediction),
    and for the streamed tokens the engine sent meanwhile and the steps that ended an idle spell,
    when the profile measured those. A profile's token curve prices each step by its tokens, from
    the engine's count of steps per token count; an engine that reported none (a report written
    before engines counted them) has no speed against such a profile.
    `waiting` (per run, engine id -> seconds its loop waited for its core) is taken off the
    measured time: that is the router's CPU, which the simulator charges apart."""
    model = FittedCostModel.from_profile(profile)
    c = model.coefficients
    sc, idle = profile.stream, profile.idle
    measured: dict[str, float] = {}
    predicted: dict[str, float] = {}
    for i, stats in enumerate(runs_stats):
        for eid, st in stats.items():
            if "loop_s" not in st:
                continue
            totals = st.get("step_features", {})
            by_tokens = st.get("steps_by_tokens")
            if profile.token_curve is not None and by_tokens is None:
                continue
            waited = waiting[i].get(eid, 0.0) if waiting else 0.0
            measured[eid] = measured.get(eid, 0.0) + st["loop_s"] - waited
            predicted[eid] = predicted.get(eid, 0.0) + c["const"] * st["steps"] + sum(
                v * totals.get(k, 0.0) for k, v in c.items() if k != "const")
            if profile.token_curve is not None:
                predicted[eid] += sum(n * model.token_seconds(float(t)) for t, n in by_tokens.items())
            if sc is not None and "stream" in st:
                predicted[eid] += sc.seconds(**st["stream"])
            if idle is not None:
                predicted[eid] += sum(n * idle.seconds(total / n) for _, n, total in st.get("idle_spells", []) if n)
    return {eid: measured[eid] / predicted[eid] for eid in sorted(measured) if predicted[eid] > 0 and measured[eid] > 0}


def untrusted_reasons(profile: CostProfile, speeds: dict[str, float], foreign: float | None,
                      metrics: dict[str, MetricComparison], probe_speeds: dict[str, float] | None = None, *,
                      ran_on: str | None) -> list[str]:
    """Why a comparison should not be trusted; `ran_on` is the boot id of the machine the real runs
    ran on (None: not known)."""
    reasons = []
    if speeds and max(abs(s - 1) for s in speeds.values()) > TRUSTED_STEP_DRIFT:
        shown = ", ".join(f"{eid} {s:.2f}x" for eid, s in speeds.items())
        reasons.append(f"the engines' steps ran at {shown} the profile's step time: the machine's speed moved "
                       f"since profiling, so the plain error measures that drift (see the comparison at the run's "
                       f"speed)")
    moved = {eid: s / probe_speeds[eid] for eid, s in speeds.items() if probe_speeds and eid in probe_speeds}
    if moved and max(abs(m - 1) for m in moved.values()) > TRUSTED_STEP_DRIFT:
        shown = ", ".join(f"{eid} {probe_speeds[eid]:.2f}x -> {speeds[eid]:.2f}x" for eid in moved)
        reasons.append(f"the machine's speed moved between the probe and the run ({shown} the profile's step time), "
                       f"so the comparison at the probed speed measures that drift too")
    if foreign is not None and foreign > TRUSTED_FOREIGN_SHARE:
        reasons.append(f"other processes used {foreign:.0%} of the CPU during the real run")
    measured_on = profile.environment.get("boot_id")
    if measured_on is None:
        reasons.append("the profile does not say which machine it was measured on")
    elif ran_on is None:
        reasons.append("the report does not say which machine its real runs ran on")
    elif measured_on != ran_on:
        reasons.append("the profile was measured on another machine (or before a reboot)")
    noisy = [m for m in HEADLINE if m in metrics and metrics[m].real_spread is not None
             and metrics[m].real_spread > abs(metrics[m].rel_error)]
    if noisy:
        reasons.append(f"the real repeats spread more than the error on {', '.join(noisy)}")
    return reasons


def steps_speed(profile: CostProfile, steps: list[RunSteps]) -> dict[str, float]:
    return step_speed(profile, [s.stats for s in steps], [s.wait_s for s in steps])
