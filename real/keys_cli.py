"""`microserving keys DIR`: make a cluster's CurveZMQ key directory.

    microserving keys ./cluster-keys
    microserving engine --listen tcp://0.0.0.0:5555 --keys ./cluster-keys        # on each engine host
    microserving run --connect tcp://host:5555 --keys ./cluster-keys             # on the router host

The directory holds the engines' and the router's keypairs (real.keys says which file is what);
copy it to every host over a secure channel. Rotation: make a new directory and restart with it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser("keys", description=__doc__.split("\n\n")[0])
    p.add_argument("directory", type=Path, help="where to write the keys (created mode 0700; never overwritten)")


def run(args: argparse.Namespace) -> int:
    from real.keys import generate_keys

    try:
        d = generate_keys(args.directory)
    except (FileExistsError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote engine and router keys to {d}: pass it with --keys to `microserving engine`, `run` and `serve`")
    return 0
