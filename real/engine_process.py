"""Entry point of an engine process: build the EngineWorker, report readiness, serve, clean up.

RealCluster launches `python -m real.engine_process --spec JSON --ready-fd N`: a fresh
interpreter (no forked torch or zmq state, and unlike multiprocessing's spawn no re-import of the
caller's __main__, so a script without a main guard still works). The spec arrives as JSON and
the ready report leaves as one JSON line on the inherited pipe, so nothing is pickled. SIGTERM
and SIGINT end the loop; the shared KV pool file is unlinked on the way out, and
`exit_with_parent` makes the engine stop when its launcher is gone.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable

from real.config import EngineSpec


def engine_main(spec: EngineSpec, report: Callable[[dict], None] | None = None) -> int:
    """Run one engine until shutdown. `report` gets one dict: {"address", "shm", "host", "pid"}
    once listening, or {"error", "traceback"} if the engine could not start."""
    worker = None
    report = report or (lambda data: None)
    try:
        from real.worker import EngineWorker

        worker = EngineWorker(spec)
    except Exception as exc:  # noqa: BLE001 - report any startup failure to the launcher
        report({"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()})
        return 1

    def stop(signum, frame):
        # The loop ends at its next poll (within IDLE_POLL_MS). Raising here instead could land
        # in a C callback (a zmq frame's dealloc), which prints the exception and swallows it.
        worker.running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        report({"address": worker.address, "shm": worker.shared and worker.shared.path, "host": worker.host,
                "pid": os.getpid()})
        worker.serve()
    finally:
        # A second signal (Ctrl-C reaches the whole process group, then the launcher's SIGTERM)
        # must not interrupt the cleanup.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        worker.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="one engine process (launched by RealCluster)")
    parser.add_argument("--spec", required=True, help="EngineSpec as JSON")
    parser.add_argument("--ready-fd", type=int, help="file descriptor for the one-line JSON ready report")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s engine %(levelname)s %(message)s")
    def report(data: dict) -> None:
        if args.ready_fd is not None:
            with os.fdopen(args.ready_fd, "w") as f:
                f.write(json.dumps(data) + "\n")

    return engine_main(EngineSpec.model_validate_json(args.spec), report)


if __name__ == "__main__":
    sys.exit(main())
