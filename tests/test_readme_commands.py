"""Every command of the README, run as a new user would: from a temporary directory outside the
checkout, through the installed `microserving` and interpreter, writing nothing into the repo.

Commands whose inputs a user brings (my_cluster.yaml, faults.yaml, cluster.yaml) get small files of
the documented shape in the temporary directory; repo-relative paths (experiments/specs/...,
calibration/profiles/...) are made absolute, as a user outside the checkout would write them.
Commands that need what tests may not use are listed in SKIPPED with the reason: a GPU, other hosts,
the shared data folder, a vLLM run directory, the installer and the test suite itself. Servers are started, checked to
answer, and stopped.
"""
from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SKIPPED = {
    "bash install.sh": "the installer (CI runs it on a fresh checkout)",
    "-m pytest": "the test suite itself",
    "--device cuda": "needs a GPU",
    "tcp://host": "needs engines on other hosts",
    "../shared": "tests must not read the shared data folder",
    "$R/": "tests must not read the shared data folder",
    "RUN_DIR": "needs a recorded vLLM run directory",
    "BUNDLE": "needs a vLLM per-layer profile bundle",
}
USER_FILES = {
    "my_cluster.yaml": "cluster: {engines: [{count: 2}], strategy: {name: pd}}\nworkload: {num_requests: 50}\n",
    "cluster_with_faults.yaml": ("cluster: {engines: [{count: 3}], strategy: {name: pd}}\nworkload: {num_requests: 60, "
                                 "arrival: {rate: 20}}\nfaults:\n  - {at: 1.0, kind: crash, engine: e1}\n"),
    "faults.yaml": "faults:\n  - {at: 1.0, kind: crash, engine: e2}\n",
    "cluster.yaml": "engines: [{count: 2, model: tiny, num_pages: 256}]\nstrategy: {name: round_robin}\n"
                    "serve: {port: 0}\n",
}


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.DOTALL)
    text = "\n".join(blocks).replace("\\\n", " ")
    out = []
    for line in text.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line and not line.startswith("#") and not re.match(r"^[A-Z]+=", line):
            out.append(line)
    return out


def _skip_reason(command: str) -> str | None:
    return next((why for key, why in SKIPPED.items() if key in command), None)


def _as_user(command: str, tmp: Path) -> list[str]:
    """The command with the venv's executables and absolute repo paths, run from `tmp`."""
    argv = shlex.split(command.replace('"$TOKEN"', "secret-token"))
    if argv[0].startswith(".venv/bin/"):
        argv[0] = str(BIN / argv[0].removeprefix(".venv/bin/"))
    for i, arg in enumerate(argv):
        first = arg.split("/", 1)[0]
        if first in ("experiments", "calibration", "benchmarks", "docs") and (ROOT / arg).exists():
            argv[i] = str(ROOT / arg)
    return argv


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """One directory for all commands, in README order: later ones read what earlier ones wrote
    (calibrate fit reads the samples of calibrate profile, plot the sweep's results)."""
    d = tmp_path_factory.mktemp("user")
    for name, content in USER_FILES.items():
        (d / name).write_text(content)
    return d


@pytest.mark.slow
@pytest.mark.parametrize("command", readme_commands())
def test_readme_command_works_from_anywhere(command, workdir):
    why = _skip_reason(command)
    if why:
        pytest.skip(why)
    tmp_path = workdir
    before = _repo_state()
    argv = _as_user(command, tmp_path)
    env = dict(os.environ, PYTHONPATH="")  # only what the install provides
    if argv[1:2] == ["serve"]:
        _serve_answers(argv, tmp_path, env)
    else:
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert run.returncode == 0, f"{command}\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
        assert "Traceback" not in run.stderr, run.stderr[-3000:]
    assert _repo_state() == before, "the command wrote into the checkout"


def _serve_answers(argv: list[str], tmp: Path, env: dict) -> None:
    if "--port" not in argv and "--config" not in argv:
        argv = [*argv, "--port", "0"]
    proc = subprocess.Popen(argv, cwd=tmp, env=env, stderr=subprocess.PIPE, text=True)
    try:
        deadline, url = time.monotonic() + 300, None
        while url is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"on (http://[\d.]+:\d+)/v1", line)
            url = m and m.group(1)
        assert url, "the server did not start"
        assert httpx.get(url + "/health", timeout=30).json()["status"] == "ok"
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def _repo_state() -> str:
    return subprocess.run(["git", "status", "--porcelain", "--ignored=no"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout
