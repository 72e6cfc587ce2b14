"""`microserving run` and `microserving engine`: a workload to JSON, a prompt to text, a router
reaching an engine started by hand, and clear errors."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

from microserving.cli import main


def test_run_workload_writes_sim_compatible_json(tmp_path, capsys):
    out = tmp_path / "run.json"
    assert main(["run", "--engines", "2", "--strategy", "pd", "--num-requests", "6", "--rate", "50",
                 "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    for key in ("config", "seed", "metrics", "engine_stats", "records"):  # as sim's RunResult
        assert key in data
    assert data["metrics"]["completed"] == 6 and data["metrics"]["failed"] == 0
    assert all(s["pages"]["used"] == 0 and s["leak"] is None for s in data["engine_stats"].values())
    assert all(len(r["token_ids"]) == r["output_len"] > 0 for r in data["records"]), "generated ids per request"
    assert "Serving Benchmark Result" in capsys.readouterr().out


def test_run_prompt_streams_text(capsys):
    assert main(["run", "--engines", "1", "--strategy", "round_robin", "--prompt", "hello", "--max-tokens", "5"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() and "5 generated" in captured.err
    assert "engine e0 ready on tcp://" in captured.err, "start-up is not silent"


def test_router_reaches_an_engine_started_with_the_engine_command(capsys, tmp_path):
    """The multi-host recipe of the README on one host: one key directory, an engine started with
    `microserving engine --keys`, a router with a local engine that ships it KV, all authenticated."""
    keys = str(tmp_path / "keys")
    assert main(["keys", keys]) == 0
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    proc = subprocess.Popen([sys.executable, "-m", "microserving.cli", "engine", "--listen", f"tcp://127.0.0.1:{port}",
                             "--id", "remote", "--keys", keys], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert "listening on tcp://127.0.0.1:" in proc.stdout.readline()
        assert main(["run", "--engines", "1", "--connect", f"tcp://127.0.0.1:{port}", "--keys", keys,
                     "--strategy", "pd", "--param", 'decode=["remote"]', "--param", 'prefill=["e0"]',
                     "--num-requests", "4", "--rate", "100"]) == 0
        out = capsys.readouterr().out
        assert "remote:" in out and re.search(r"Failed requests:\s+0\b", out), out
        assert "KV sent 0.0 MiB" not in out.split("e0:")[1].splitlines()[0], "e0 shipped its KV to remote"
    finally:
        proc.terminate()
        proc.wait(10)


def test_errors_are_reported_not_raised(capsys):
    assert main(["run", "--engines", "1", "--strategy", "no_such_strategy", "--num-requests", "1"]) == 2
    assert "unknown strategy" in capsys.readouterr().err
    assert main(["run", "--engines", "2", "--device", "cpu,cpu,cpu"]) == 2


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_without_a_strategy_uses_the_default_pd(capsys):
    assert main(["run", "--model", "tiny", "--prompt", "hi", "--max-tokens", "3"]) == 0
    assert "3 generated" in capsys.readouterr().err


def test_connecting_to_an_address_where_nothing_listens_fails_at_once(capsys):
    port = _free_port()
    t0 = time.monotonic()
    assert main(["run", "--connect", f"tcp://127.0.0.1:{port}", "--prompt", "hi"]) == 2
    assert time.monotonic() - t0 < 10
    err = capsys.readouterr().err
    assert "connecting to 1 engine(s)" in err and "starting" not in err
    assert f"nothing listens at tcp://127.0.0.1:{port}" in err
