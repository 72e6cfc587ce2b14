"""A seeded simulation gives the same bytes on every Python (and numpy) it supports. Needs other
interpreters, so it runs only when given them (each with the simulator's dependencies: numpy,
scipy, simpy, pydantic, pyzmq, msgpack, pyyaml; this checkout goes on their PYTHONPATH):

    MICROSERVING_OTHER_PYTHONS=/path/to/python3.10:/path/to/python3.13 .venv/bin/python -m pytest -m slow \\
        tests/test_same_results_across_pythons.py
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OTHERS = [p for p in os.environ.get("MICROSERVING_OTHER_PYTHONS", "").split(os.pathsep) if p]

FAULTS_CONFIG = """\
cluster:
  engines: [{count: 3}]
  strategy: {name: pd}
workload:
  num_requests: 2000
  arrival: {process: poisson, rate: 20}
  prompt_len: {kind: lognormal, mean: 800, sigma: 0.8, max: 6000}
  output_len: {kind: lognormal, mean: 200, sigma: 0.6, max: 2048}
seed: 11
token_times: false
faults:
  faults:
    - {at: 30, kind: crash, engine: e1}
    - {at: 40, kind: restart, engine: e1}
    - {at: 60, kind: stall, engine: e2, duration: 0.3}
"""

RUNS = {
    "default": ["--seed", "3", "--num-requests", "400"],
    "balanced_pd": ["--strategy", "balanced_pd", "--param", "ratio=0.3", "--seed", "4", "--num-requests", "300",
                    "--rate", "20"],
    "prefix_aware": ["--strategy", "prefix_aware", "--seed", "5", "--num-requests", "300"],
    "pd_faults_no_token_times": ["--config", "{faults}"],
}


@pytest.mark.slow
@pytest.mark.skipif(not OTHERS, reason="no other interpreters given (MICROSERVING_OTHER_PYTHONS)")
@pytest.mark.parametrize("name", sorted(RUNS))
def test_a_seeded_simulation_gives_the_same_bytes_on_every_python(name, tmp_path):
    faults = tmp_path / "faults.yaml"
    faults.write_text(FAULTS_CONFIG)
    args = [a.format(faults=faults) for a in RUNS[name]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    outputs = {}
    for i, python in enumerate([sys.executable, *OTHERS]):
        out = tmp_path / f"{i}.json"
        done = subprocess.run([python, "-m", "microserving", "sim", *args, "--out", str(out)], env=env, cwd=tmp_path,
                              capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"{python}: {done.stderr[-2000:]}"
        outputs[python] = out.read_bytes()
    assert len(set(outputs.values())) == 1, f"results differ between {list(outputs)}"
