"""Held-out error of interpolating a measured grid: each interior point predicted from its two
neighbours along one axis (the point itself left out), compared with what was measured.

This is the error of a lookup halfway between grid points at twice the grid's spacing, so
it bounds from above what the table makes of points between its own samples.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def curve_holdout_mape(xs: Sequence[float], ys: Sequence[float], floor_us: float = 1.0) -> float | None:
    """Mean |predicted - measured| / measured over interior points; None with fewer than 3."""
    order = np.argsort(xs)
    x, y = np.asarray(xs, float)[order], np.asarray(ys, float)[order]
    if x.size < 3:
        return None
    t = (x[1:-1] - x[:-2]) / (x[2:] - x[:-2])
    pred = y[:-2] + t * (y[2:] - y[:-2])
    return float(np.mean(np.abs(pred - y[1:-1]) / np.maximum(y[1:-1], floor_us)))


def grid_holdout_mape(points: dict[tuple, float], axis: int, floor_us: float = 1.0) -> float | None:
    """curve_holdout_mape along one axis of a grid keyed by coordinate tuples, pooled over lines."""
    lines: dict[tuple, list[tuple[float, float]]] = {}
    for key, y in points.items():
        rest = key[:axis] + key[axis + 1:]
        lines.setdefault(rest, []).append((key[axis], y))
    errors = []
    for line in lines.values():
        if len(line) < 3:
            continue
        line.sort()
        x = np.array([p[0] for p in line], float)
        y = np.array([p[1] for p in line], float)
        t = (x[1:-1] - x[:-2]) / (x[2:] - x[:-2])
        pred = y[:-2] + t * (y[2:] - y[:-2])
        errors.append(np.abs(pred - y[1:-1]) / np.maximum(y[1:-1], floor_us))
    return float(np.mean(np.concatenate(errors))) if errors else None
