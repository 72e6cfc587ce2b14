"""The token curve of a fitted step model: its knots and the basis the fit solves for.

The token curve stands, in calibration.fit's default form, for const and prefill_tokens: a step's
time as a piecewise-linear function of the tokens it computes (prefill tokens + decode rows), with
knots at powers of two, each knot's value fitted (>= 0) with the other coefficients. A CPU's
matrix kernels do not cost the same per token at every batch size: measured on SmolLM2-135M (one
thread), a step of 2 tokens took 52 ms, of 4 tokens 86 ms, then about 1.7 ms more per token, and
the straight line through that knee was 15% off on held-out steps where the curve is 4% off
(the tiny model: 1.95% -> 1.3%, medians over 24 profiles). It is the per-layer tables' dense
curve (sim.layer_cost_model) for a profile that times whole steps. The simulator reads it as
sim.interpolate.Table1D does (FittedCostModel), so the basis here weighs each knot as that does.
"""
from __future__ import annotations

import numpy as np

from calibration.fit_error import FitError
from calibration.samples import StepSample
from core_api.step import StepFeatures
from sim.interpolate import bracket


def step_tokens(samples: list[StepSample]) -> np.ndarray:
    """Tokens each sample's step computes: the token curve's axis."""
    return np.array([StepFeatures(**s.features).total_tokens for s in samples], dtype=np.float64)


def curve_basis(tokens: np.ndarray, knots: list[float]) -> np.ndarray:
    """One column per knot: the weight sim.interpolate.Table1D gives that knot's value at each
    sample's tokens, so that basis @ values is the curve the simulator will read."""
    basis = np.zeros((tokens.size, len(knots)))
    for i, t in enumerate(tokens):
        lo, hi, w = bracket(knots, float(t))
        basis[i, lo] += 1.0 - w
        basis[i, hi] += w
    return basis


def curve_knots(tokens: np.ndarray, min_samples: int) -> list[float]:
    """Powers of two from 1 to the first at or past the most tokens a sample computes, less those
    fewer than `min_samples` samples would pin down (a knot's value is fitted from the samples
    between its neighbours), the largest dropped first. At least two, else a FitError."""
    knots = [1.0]
    while knots[-1] < tokens.max():
        knots.append(2 * knots[-1])
    while len(knots) > 2:
        active = np.count_nonzero(curve_basis(tokens, knots), axis=0)
        thin = [j for j in range(len(knots)) if active[j] < min_samples]
        if not thin:
            break
        del knots[thin[-1]]
    if len(knots) < 2 or np.unique(tokens).size < 2:
        raise FitError("the step samples span too few token counts for a token curve: profile steps of several "
                       "sizes, or fit --form linear")
    return knots
