"""Argument types and shared flags of the simulator's commands: a bad value is an argparse error
(exit 2, naming the flag) before any simulation runs, never a run that quietly means nothing
(an SLO of -5 ms met by no request, a "capacity of 0.000 req/s")."""
from __future__ import annotations

import argparse
import math


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def arrival_rate(text: str) -> float:
    """Requests per second: a positive number, or inf for every request at once (a burst)."""
    if text.strip().lower() in ("inf", "infinity"):
        return math.inf
    return positive_float(text)


def _whole_number(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None


def positive_int(text: str) -> int:
    value = _whole_number(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """A seed: 0 or more."""
    value = _whole_number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def fraction(text: str) -> float:
    """A share in (0, 1]: an SLO attainment target."""
    value = positive_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


def add_slo_arguments(p: argparse.ArgumentParser, target_help: str) -> None:
    p.add_argument("--ttft-slo", type=positive_float, help="TTFT limit (ms)")
    p.add_argument("--tpot-slo", type=positive_float, help="TPOT limit (ms)")
    p.add_argument("--e2el-slo", type=positive_float, help="end-to-end latency limit (ms)")
    p.add_argument("--target", type=fraction, default=0.9, help=target_help)
