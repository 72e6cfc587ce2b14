"""The `microserving` command: one subcommand per job, each in its own module.

Subcommands register lazily (their modules import torch, matplotlib or zmq only when used).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# subcommand -> module exposing add_parser(subparsers) and run(args) -> int
SUBCOMMANDS = {
    "sim": "experiments.sim_cli",
}


def _optional(name: str, module: str) -> None:
    """Register a subcommand whose module may not exist in this checkout yet."""
    if importlib.util.find_spec(module) is not None:
        SUBCOMMANDS[name] = module


for _name, _module in (
    ("run", "real.cli"),
    ("engine", "real.engine_cli"),
    ("keys", "real.keys_cli"),
    ("serve", "real.serve_cli"),
    ("calibrate", "calibration.cli"),
    ("replay", "calibration.replay_cli"),
    ("sweep", "experiments.sweep"),
    ("plot", "experiments.plots"),
    ("capacity", "experiments.capacity"),
    ("search", "experiments.strategy_search"),
):
    _optional(_name, _module)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for users (a trace's skipped lines) as one line, without a source excerpt."""
    print(f"warning: {message}", file=file or sys.stderr)


def main(argv: list[str] | None = None) -> int:
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.showwarning = shown  # main() is also called in-process (tests, notebooks)


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="microserving", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        module.add_parser(sub)
        modules[name] = module
    args = parser.parse_args(argv)
    try:
        return modules[args.command].run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `microserving sim | head`: the reader left. Quietly, as a shell tool killed by SIGPIPE would
        # (128 + 13); stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
