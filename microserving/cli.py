"""The `microserving` command: one subcommand per job, each in its own module.

Only the chosen subcommand's module is imported (the table below names each with its one-line
help), so `microserving --help` and every command start without loading torch, matplotlib or zmq
unless that command needs them.
"""
from __future__ import annotations

import argparse
import gc
import importlib
import os
import sys
import warnings

# subcommand -> (module exposing add_parser(subparsers) and run(args) -> int, one-line help)
SUBCOMMANDS = {
    "sim": ("experiments.sim_cli", "simulate a cluster (default: Llama-3.1-8B, 2x H100, PD, 1000 requests)"),
    "run": ("real.cli", "serve a prompt or a workload on real engines (torch, CPU or CUDA)"),
    "engine": ("real.engine_cli", "run one engine process in the foreground (multi-host serving)"),
    "keys": ("real.keys_cli", "make a CurveZMQ key directory for engines and routers"),
    "serve": ("real.serve_cli", "OpenAI-compatible HTTP server on the router (completions, chat, admin)"),
    "calibrate": ("calibration.cli", "profile a real engine, fit the simulator's cost model, validate it"),
    "replay": ("calibration.replay_cli", "replay a real serving run on the simulator and print real vs simulated"),
    "sweep": ("experiments.sweep", "run a sweep file (cartesian product of configs) in parallel"),
    "plot": ("experiments.plots", "plot a sweep's results (metric vs rate, CDFs, SLO attainment)"),
    "capacity": ("experiments.capacity", "highest request rate that meets an SLO attainment target"),
    "search": ("experiments.strategy_search", "find the best strategy / P:D split / ratio / TP for a GPU budget"),
}


class _Subcommands:
    """The subparsers action, handing each module's add_parser its table help."""

    def __init__(self, action) -> None:
        self.action = action

    def add_parser(self, name: str, **kwargs) -> argparse.ArgumentParser:
        return self.action.add_parser(name, help=SUBCOMMANDS[name][1], **kwargs)


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings meant for users (a trace's skipped lines) as one line, without a source excerpt."""
    print(f"warning: {message}", file=file or sys.stderr)


def console_main() -> int:
    """The `microserving` command: main(), then the heap frozen before the interpreter exits.
    Shutdown runs the cyclic garbage collector over everything still alive (a simulation's
    records, every imported module): 35 ms of a 0.5 s `microserving sim`. Frozen objects are
    skipped by it (reference counting still frees what it frees). Not done by main(), which
    tests and notebooks call in a process that goes on."""
    code = main()
    gc.freeze()
    return code


def main(argv: list[str] | None = None) -> int:
    shown, warnings.showwarning = warnings.showwarning, _one_line_warning
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    finally:
        warnings.showwarning = shown  # main() is also called in-process (tests, notebooks)


def _main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="microserving", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    module = None
    for name, (module_name, help_) in SUBCOMMANDS.items():
        if name == chosen:
            module = importlib.import_module(module_name)
            module.add_parser(_Subcommands(sub))
        else:
            sub.add_parser(name, help=help_, add_help=False)  # listed in --help; never parsed
    args = parser.parse_args(argv)
    try:
        return module.run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # `microserving sim | head`: the reader left. Quietly, as a shell tool killed by SIGPIPE would
        # (128 + 13); stdout goes to /dev/null so the interpreter's final flush cannot fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(console_main())
