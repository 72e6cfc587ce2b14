"""Sweep runs on a Ray cluster (`microserving sweep SPEC --ray [ADDRESS]`, extra `[ray]`).

Ray only replaces the process pool: each run is one Ray task calling the same `run_one` the local
pool calls, with the same JSON in and out, so a result line is what a local sweep writes for that
run (only `wall_s`, a measured time, differs, as between any two sweeps). The parent still alone
appends lines, in completion order, so `--resume`, progress and failed-run lines work unchanged. A
task that dies without returning (its worker killed, a node lost) becomes an error line for its
run, as an exception inside a run does.

Where the code comes from: every node must import this project. On a cluster, install the same
version on every node (the usual way), or let Ray ship the checkout with the job
(`--ray-working-dir .`, Ray's runtime_env working_dir). With no ADDRESS, Ray starts a local
instance on this machine (what the tests do); `--ray auto` joins the cluster this node belongs to
(`ray start` ran here), `--ray ray://HEAD:10001` connects a client to a remote head.
"""
from __future__ import annotations

import json
import socket
from collections.abc import Iterable, Iterator

from experiments.sweep_spec import RunSpec


class RayUnavailable(RuntimeError):
    """--ray without Ray installed."""


def _task(run_json: str) -> str:
    from experiments.sweep import _worker

    return _worker(run_json)


def _check_reachable(address: str | None, timeout_s: float = 5.0) -> None:
    """Fail at once when a head's port does not answer: Ray itself retries for minutes."""
    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as exc:
        raise RayUnavailable(f"cannot reach a Ray head at {address}: {exc}") from None


def _failed_line(run: RunSpec, exc: BaseException) -> dict:
    from experiments.sweep import line_head

    return line_head(run) | {"status": "error", "wall_s": 0.0,
                             "error": f"{type(exc).__name__}: the Ray task of this run failed: {exc}".strip()}


def execute_on_ray(runs: list[RunSpec], address: str | None, jobs: int | None = None,
                   working_dir: str | None = None) -> Iterable[dict]:
    """Result lines as runs finish on Ray; at most `jobs` runs in flight (default: as many as
    the cluster's CPUs allow, Ray queues the rest)."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable("--ray needs Ray: pip install 'llm-microserving[ray]'") from None
    started_here = not ray.is_initialized()
    if started_here:
        _check_reachable(address)
        runtime_env = {"working_dir": working_dir} if working_dir else None
        try:
            ray.init(address=address, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
        except (ConnectionError, RuntimeError) as exc:  # e.g. `auto` with no cluster on this node
            raise RayUnavailable(f"cannot start or join Ray at {address or 'a new local instance'}: {exc}") from None
    try:
        yield from _drain(ray, runs, jobs)
    finally:
        if started_here:
            ray.shutdown()


def _drain(ray, runs: list[RunSpec], jobs: int | None) -> Iterator[dict]:
    task = ray.remote(num_cpus=1, max_retries=0)(_task)
    todo = iter(runs)
    in_flight: dict = {}  # object ref -> run
    window = jobs or len(runs)

    def submit() -> None:
        for run in todo:
            in_flight[task.remote(run.model_dump_json())] = run
            if len(in_flight) >= window:
                return

    submit()
    try:
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            run = in_flight.pop(ref)
            try:
                line = json.loads(ray.get(ref))
            except ray.exceptions.RayError as exc:
                line = _failed_line(run, exc)
            submit()
            yield line
    finally:
        for ref in in_flight:  # interrupted: do not leave runs computing for nobody
            ray.cancel(ref, force=True)
