"""`microserving engine`: run one engine in the foreground, for routers on other hosts.

    microserving keys ./cluster-keys    # once; copy the directory to every host
    microserving engine --listen tcp://0.0.0.0:5555 --keys ./cluster-keys --device cuda:0 --model smollm2 --id d0

A router reaches it with `microserving run --connect tcp://HOST:5555 --keys ./cluster-keys` (or an
`address:` entry and `keys:` in a cluster config). The socket binds to loopback unless an address
is given; beyond loopback the engine refuses to start without --keys, and with keys it answers
only clients holding them. Ctrl-C stops it and removes its shared KV pool file.
"""
from __future__ import annotations

import argparse
import sys

from pydantic import ValidationError

from real.transports import AUTO, transport_modes


def add_parser(sub) -> None:
    p = sub.add_parser("engine", description=__doc__.split("\n\n")[0])
    p.add_argument("--listen", default="tcp://127.0.0.1:5555", help="zmq address to bind (default loopback)")
    p.add_argument("--keys", help="CurveZMQ key directory (`microserving keys DIR`); required beyond loopback")
    p.add_argument("--id", default="e0", help="engine id (unique in the cluster)")
    p.add_argument("--model", default="tiny", help="tiny | smollm2 | HF checkpoint dir | .gguf file")
    p.add_argument("--model-seed", type=int, default=0, help="seed of random weights (tiny)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-pages", type=int, default=1024)
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--max-num-batched-tokens", type=int, default=512)
    p.add_argument("--transport", default=AUTO, choices=[AUTO, *transport_modes()],
                   help="how KV pages travel between engines (real/transports/)")
    p.add_argument("--fast", action="store_true", help="turn off batch-invariant mode")


def run(args: argparse.Namespace) -> int:
    from real.config import EngineSpec
    from real.engine_process import engine_main

    try:
        spec = EngineSpec(id=args.id, model=args.model, model_seed=args.model_seed, device=args.device,
                          dtype=args.dtype, threads=args.threads, num_pages=args.num_pages, page_size=args.page_size,
                          max_num_batched_tokens=args.max_num_batched_tokens, transport=args.transport,
                          batch_invariant=not args.fast, listen=args.listen, keys=args.keys)
    except ValidationError as exc:
        from core_api.validation_errors import error_text

        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2

    def report(info: dict) -> None:
        if "error" in info:
            print(f"error: {info['error']}", file=sys.stderr)
        else:
            auth = f"CURVE keys from {spec.keys}" if spec.keys else "NO authentication (loopback only)"
            print(f"engine {spec.id} ({spec.model_name} on {spec.device}) listening on {info['address']}, {auth}",
                  flush=True)

    return engine_main(spec, report)
