"""Command-line flags that replace a config's synthetic workload with a trace file.

Shared by `capacity` and `search` (and any subcommand that wants them): ``--trace FILE
--trace-format azure|burstgpt|mooncake|sharegpt`` plus the TraceOptions most used from a shell.
"""
from __future__ import annotations

import argparse

from core_api.trace_formats import TRACE_FORMATS


def add_trace_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("trace workload (instead of the config's synthetic one)")
    g.add_argument("--trace", help="trace file")
    g.add_argument("--trace-format", choices=TRACE_FORMATS, help="format of --trace")
    g.add_argument("--trace-start-s", type=float, help="keep arrivals from this many seconds in")
    g.add_argument("--trace-end-s", type=float, help="...up to this many seconds in")
    g.add_argument("--max-requests", type=int, help="keep the first n requests (after the window)")
    g.add_argument("--subsample", type=int, help="draw n requests at random (seeded)")
    g.add_argument("--skip-bad-lines", action="store_true",
                   help="skip malformed lines with a warning instead of stopping at the first")


def trace_spec_from_args(args: argparse.Namespace, rate: float | None = None, seed: int = 0):
    """The TraceSpec the flags describe, or None without --trace; errors name the flag."""
    if not getattr(args, "trace", None):
        return None  # before importing the trace readers: a plain simulation never needs them
    from core_api.traces import TraceSpec

    if not args.trace_format:
        raise ValueError("--trace needs --trace-format")
    options = {"start_s": args.trace_start_s, "end_s": args.trace_end_s, "max_requests": args.max_requests,
               "subsample": args.subsample, "skip_bad_lines": args.skip_bad_lines, "rate": rate, "seed": seed}
    return TraceSpec.model_validate({"format": args.trace_format, "path": args.trace,
                                     "options": {k: v for k, v in options.items() if v is not None}})
