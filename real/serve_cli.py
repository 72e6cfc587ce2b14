"""`microserving serve`: an OpenAI-compatible HTTP server on the programmable router.

    microserving serve --engines 2 --model tiny --strategy least_loaded
    microserving serve --model smollm2 --strategy pd --port 8000 --admin-token "$TOKEN"
    microserving serve --config cluster.yaml          # engines, strategy and an optional `serve:` section

Engines are started on this host (`--engines N`) and/or reached where `microserving engine` runs
(`--connect ADDRESS`), or all of it comes from `--config`. The server listens on 127.0.0.1 unless
`--host` says otherwise. Routes: /v1/completions, /v1/chat/completions, /v1/models, /health,
/metrics, and /admin/strategy (only with an admin token: --admin-token or $MICROSERVING_ADMIN_TOKEN).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

from pydantic import ValidationError

from core_api.strategy import params_from_cli
from core_api.validation_errors import error_text
from real.engine_args import add_engine_arguments, engines_from_args, print_ready


def add_parser(sub) -> None:
    p = sub.add_parser("serve", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="cluster file (YAML/JSON): engines, strategy, optional serve: section")
    p.add_argument("--strategy", help="strategy name or module:Class (default least_loaded, or the config's)")
    p.add_argument("--param", action="append", default=[], metavar="KEY=JSON", help="strategy parameter (repeatable)")
    add_engine_arguments(p)
    g = p.add_argument_group("http")
    g.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    g.add_argument("--port", type=int, help="port (default 8000; 0 picks a free one)")
    g.add_argument("--admin-token", help="enables /admin/* (default $MICROSERVING_ADMIN_TOKEN; off if neither)")
    g.add_argument("--max-concurrent", type=int, help="requests in flight before 429 (default 256)")
    g.add_argument("--served-model-name", help="the model id clients send (default: the model's name)")
    g.add_argument("--default-max-tokens", type=int, help="chat max_tokens when the client gives none (default 512)")
    g.add_argument("--max-body-bytes", type=int, help="larger request bodies get 413 before parsing (default 4 MiB)")
    g.add_argument("--allow-strategy-module", action="append", default=[], metavar="MODULE",
                   help="a module whose strategies (MODULE:Class) /admin/strategy may switch to (repeatable)")
    g.add_argument("--log-level", help="uvicorn log level (default warning)")
    g.add_argument("--export-tokenizer", type=Path, metavar="DIR",
                   help="write the model's tokenizer as a Hugging Face tokenizer directory and exit (for "
                        "benchmark clients that load it, e.g. GuideLLM --processor DIR)")


def build_configs(args: argparse.Namespace):
    """(RealClusterConfig, ServeConfig) from the file and/or flags; flags win."""
    from real.config import RealClusterConfig
    from real.serve.config import ADMIN_TOKEN_ENV, ServeConfig, load_serve_file

    if args.admin_token == "":
        raise ValueError("--admin-token is empty: is the variable it names (e.g. $TOKEN) set? Leave the flag out "
                         f"to keep the admin routes off, or set ${ADMIN_TOKEN_ENV}")
    if args.config:
        cluster, serve = load_serve_file(args.config)
        data, serve_data = cluster.model_dump(mode="json"), serve.model_dump()
    else:
        engines = engines_from_args(args)
        data, serve_data = {"engines": engines, "strategy": {"name": "least_loaded"},
                            "start_timeout_s": args.connect_timeout}, {}
    if args.keys:
        data["keys"] = str(Path(args.keys).resolve())
    if args.strategy:
        data["strategy"] = {"name": args.strategy, "params": {}}
    data["strategy"].setdefault("params", {}).update(params_from_cli(args.param))
    flags = {"host": args.host, "port": args.port, "admin_token": args.admin_token,
             "max_concurrent": args.max_concurrent, "served_model_name": args.served_model_name,
             "default_max_tokens": args.default_max_tokens, "log_level": args.log_level,
             "max_body_bytes": args.max_body_bytes, "strategy_modules": args.allow_strategy_module or None}
    serve_data.update({k: v for k, v in flags.items() if v is not None})
    if not serve_data.get("admin_token") and os.environ.get(ADMIN_TOKEN_ENV):
        serve_data["admin_token"] = os.environ[ADMIN_TOKEN_ENV]
    return RealClusterConfig.model_validate(data), ServeConfig.model_validate(serve_data)


def run(args: argparse.Namespace) -> int:
    from core_api.strategy import StrategyError
    from real.cluster import RealCluster
    from real.serve.server import bind, serve

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cluster_config, config = build_configs(args)
    except (ValidationError, ValueError, OSError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    if args.export_tokenizer:
        return export_tokenizer(cluster_config, args.export_tokenizer)
    try:
        sock = bind(config.host, config.port)
    except OSError as exc:
        print(f"error: cannot listen on {config.host}:{config.port}: {exc}", file=sys.stderr)
        return 2
    host, port = sock.getsockname()[:2]

    def ready(state, server) -> None:
        r = state.router
        print(f"serving {state.frontend.served_name} on http://{host}:{port}/v1 with {len(r.engines)} engine(s), "
              f"strategy {r.active.name} {json.dumps(r.active.params)}; admin routes "
              f"{'on' if config.admin_token else 'off'}", file=sys.stderr, flush=True)

    n = len(cluster_config.expanded())
    print(f"starting {n} engine(s)...", file=sys.stderr, flush=True)
    try:
        with RealCluster(cluster_config, on_ready=print_ready) as cluster:
            asyncio.run(serve(cluster, config, sock, ready))
    except (StrategyError, RuntimeError, ValueError) as exc:
        print(f"error: {error_text(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # uvicorn re-raises the signal it handled, after a clean shutdown
        pass
    finally:
        sock.close()
    print("server stopped", file=sys.stderr)
    return 0


def export_tokenizer(cluster_config, directory: Path) -> int:
    from real.hf_tokenizer_export import export_hf_tokenizer
    from real.loading import load_tokenizer

    specs = [spec for spec, _, _ in cluster_config.engine_specs() if spec is not None]
    if not specs:
        print("error: --export-tokenizer needs a model (--model), not only --connect", file=sys.stderr)
        return 2
    out = export_hf_tokenizer(load_tokenizer(specs[0].model_name), directory, specs[0].max_model_len)
    print(f"wrote the {specs[0].model_name} tokenizer to {out} (tokenizer.json, tokenizer_config.json)")
    return 0
