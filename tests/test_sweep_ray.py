"""`microserving sweep --ray`: the same runs on a local Ray instance started by the test give the
same result lines as the local process pool (all but the measured `wall_s`), failed runs are
recorded, a task that dies becomes an error line, --resume skips finished runs, progress prints."""
from __future__ import annotations

import json

import pytest

from experiments.sweep import RayTarget, read_results, run_sweep
from experiments.sweep_spec import SweepSpec
from tests.test_sweep import TINY

ray = pytest.importorskip("ray", reason="the [ray] extra is not installed")
pytestmark = pytest.mark.slow

WRONG_ENGINE = {"name": "pd", "label": "pd_e9", "params": {"prefill": ["e0"], "decode": ["e9"]}}


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _by_key(path) -> dict[str, str]:
    lines = {}
    for line in read_results(path):
        line.pop("wall_s")
        lines[line["key"]] = json.dumps(line, sort_keys=True, allow_nan=True)
    return lines


def test_a_sweep_on_ray_writes_what_a_local_sweep_writes(local_ray, tmp_path, capsys):
    spec = SweepSpec.model_validate({**TINY, "strategies": TINY["strategies"] + [WRONG_ENGINE]})
    local, remote = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    run_sweep(spec, local, jobs=2)
    seen = []
    state = run_sweep(spec, remote, ray=RayTarget(), progress=lambda s: seen.append(s.done))
    assert state.done == 12 and state.failed == 4
    assert seen == list(range(13))  # one progress report per finished run, after the first
    assert _by_key(remote) == _by_key(local)  # byte-identical per run, but for the measured wall time
    assert sum("no engine 'e9'" in ln.get("error", "") for ln in read_results(remote)) == 4

    text = remote.read_text()
    again = run_sweep(spec, remote, ray=RayTarget(), resume=True)
    assert again.done == 0 and again.skipped == 12 and remote.read_text() == text


def test_a_run_whose_task_dies_is_recorded_as_failed(local_ray, tmp_path, monkeypatch):
    from experiments import sweep_ray

    def dies(run_json: str) -> str:  # the worker process vanishes mid-run, as when a node is lost
        import os

        if json.loads(run_json)["seed"] == 1:
            os._exit(1)
        from experiments.sweep import _worker

        return _worker(run_json)

    monkeypatch.setattr(sweep_ray, "_task", dies)
    spec = SweepSpec.model_validate({**TINY, "strategies": [{"name": "round_robin"}]})
    out = tmp_path / "r.jsonl"
    state = run_sweep(spec, out, ray=RayTarget(), jobs=1)
    assert state.done == 4 and state.failed == 2
    failed = [ln for ln in read_results(out) if ln["status"] == "error"]
    assert {ln["labels"]["seed"] for ln in failed} == {1}
    assert all("Ray task of this run failed" in ln["error"] for ln in failed)


def test_an_unreachable_head_is_an_error_at_once(tmp_path, capsys):
    import socket

    from microserving.cli import main

    assert not ray.is_initialized()  # else the sweep would run on the instance already joined
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    spec = tmp_path / "s.json"
    spec.write_text(json.dumps({**TINY, "seeds": [0]}))
    assert main(["sweep", str(spec), "-o", str(tmp_path / "r.jsonl"), "--ray", f"127.0.0.1:{port}",
                 "--no-plots"]) == 2
    assert f"cannot reach a Ray head at 127.0.0.1:{port}" in capsys.readouterr().err
