"""Engine flags shared by `microserving run` and `microserving serve`."""
from __future__ import annotations

import argparse
import sys

from real.transports import AUTO, transport_modes


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("engines")
    g.add_argument("--engines", type=int, help="engine processes to start on this host (default 2)")
    g.add_argument("--connect-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="how long to wait for engines to start or answer (default 120)")
    g.add_argument("--connect", action="append", default=[], metavar="ADDRESS",
                   help="address of an engine started with `microserving engine`, e.g. tcp://host:5555 (repeatable)")
    g.add_argument("--keys", metavar="DIR", help="CurveZMQ key directory shared with --connect engines "
                   "(`microserving keys DIR`); default: fresh keys for the engines started here")
    g.add_argument("--model", default="tiny", help="tiny | smollm2 | HF checkpoint dir | .gguf file")
    g.add_argument("--device", default="cpu", help="device, or one per engine: cuda:0,cuda:1")
    g.add_argument("--threads", type=int, default=1, help="torch threads per engine process")
    g.add_argument("--num-pages", type=int, default=1024)
    g.add_argument("--page-size", type=int, default=16)
    g.add_argument("--max-model-len", type=int, help="context limit per engine (default: the model's)")
    g.add_argument("--transport", default=AUTO, choices=[AUTO, *transport_modes()],
                   help="how KV pages travel between engines (real/transports/)")
    g.add_argument("--fast", action="store_true", help="turn off batch-invariant mode (faster, not bit-exact)")


def print_ready(engine_id: str, address: str, seconds: float) -> None:
    """RealCluster's on_ready for the commands: one line per engine as it comes up."""
    print(f"  engine {engine_id} ready on {address} ({seconds:.1f} s)", file=sys.stderr, flush=True)


def engines_from_args(args: argparse.Namespace) -> list[dict]:
    """Engine entries of a RealClusterConfig: local processes (one per listed device, or
    --engines of one device) plus engines to connect to."""
    devices = args.device.split(",")
    n = args.engines if args.engines is not None else (0 if args.connect else max(2, len(devices)))
    common = {"model": args.model, "threads": args.threads, "num_pages": args.num_pages,
              "page_size": args.page_size, "transport": args.transport, "batch_invariant": not args.fast}
    if args.max_model_len:
        common["max_model_len"] = args.max_model_len
    if len(devices) > 1:
        if len(devices) != n:
            raise ValueError(f"--device lists {len(devices)} devices for {n} engines")
        engines = [dict(common, device=d) for d in devices]
    else:
        engines = [dict(common, device=devices[0], count=n)] if n else []
    return engines + [{"address": a} for a in args.connect]
