"""Piecewise-linear lookups over measured grids (step-time tables).

Linear, not log-space, blending between grid points: kernel times are close to linear in
each of tokens, sequences and context length, and profilers sample those axes on doubling
grids. Blending a linear function in log space on a doubling grid is biased upward by up to
~6% per axis; linear blending is exact for the linear part. Below the grid the first value
holds (an axis that starts at 0 always has an exact sample there); above it the top two
samples extrapolate linearly, because a longer context keeps costing more.
"""
from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence


def bracket(axis: Sequence[float], x: float) -> tuple[int, int, float]:
    """(lo, hi, t): x sits at axis[lo] + t * (axis[hi] - axis[lo]); axis sorted ascending."""
    n = len(axis)
    if n == 1 or x <= axis[0]:
        return 0, 0, 0.0
    i = bisect_right(axis, x)
    lo, hi = (n - 2, n - 1) if i >= n else (i - 1, i)
    x0, x1 = axis[lo], axis[hi]
    return lo, hi, (x - x0) / (x1 - x0)


class Table1D:
    """y(x) from measured (x, y) points, piecewise linear; values are never negative."""

    __slots__ = ("xs", "ys")

    def __init__(self, xs: Sequence[float], ys: Sequence[float]) -> None:
        pairs = sorted(zip(xs, ys))
        if not pairs:
            raise ValueError("a table needs at least one point")
        self.xs = [float(x) for x, _ in pairs]
        self.ys = [float(y) for _, y in pairs]
        if len(set(self.xs)) != len(self.xs):
            raise ValueError("a table's x values must be unique")

    def __call__(self, x: float) -> float:
        lo, hi, t = bracket(self.xs, x)
        ys = self.ys
        return max(0.0, ys[lo] + t * (ys[hi] - ys[lo]))


class Grid4D:
    """time(a, b, c, d) on a grid measured per (a, c) slice over (b, d), as attention profilers
    sweep it (prefill chunk, its cached context, decode sequences, their context).

    Slices may be ragged (a slice without prefill has only b = 0): each slice is a 2-D table
    of rows b -> Table1D over d, and the four slices around (a, c) are blended linearly.
    """

    def __init__(self, rows: Sequence[tuple[float, float, float, float, float]]) -> None:
        if not rows:
            raise ValueError("an attention grid needs at least one row")
        slices: dict[tuple[float, float], dict[float, list[tuple[float, float]]]] = {}
        for a, b, c, d, y in rows:
            slices.setdefault((a, c), {}).setdefault(b, []).append((d, y))
        self._slices = {key: ([b for b in sorted(rows_b)], [Table1D(*zip(*rows_b[b])) for b in sorted(rows_b)])
                        for key, rows_b in slices.items()}
        self.a_axis = sorted({a for a, _ in slices})
        # c values measured for each a (ragged: a = 0 may lack some c).
        self._c_axis = {a: sorted({c for a2, c in slices if a2 == a}) for a in self.a_axis}

    def _slice(self, key: tuple[float, float], b: float, d: float) -> float:
        bs, tables = self._slices[key]
        lo, hi, t = bracket(bs, b)
        v = tables[lo](d)
        return v if lo == hi else v + t * (tables[hi](d) - v)

    def _at_a(self, a: float, b: float, c: float, d: float) -> float:
        cs = self._c_axis[a]
        lo, hi, t = bracket(cs, c)
        v = self._slice((a, cs[lo]), b, d)
        return v if lo == hi else v + t * (self._slice((a, cs[hi]), b, d) - v)

    def __call__(self, a: float, b: float, c: float, d: float) -> float:
        lo, hi, t = bracket(self.a_axis, a)
        v = self._at_a(self.a_axis[lo], b, c, d)
        if lo != hi:
            v += t * (self._at_a(self.a_axis[hi], b, c, d) - v)
        return max(0.0, v)
