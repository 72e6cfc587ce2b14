"""The GPU bring-up script walks every step on the CPU (--dry-run) and reports each in one JSON."""
import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = {"env", "gpu_tests", "two_engines", "roofline", "kv_transfer", "calibrate"}


@pytest.mark.slow
def test_bringup_dry_run_reports_every_step(tmp_path):
    out = tmp_path / "out"
    subprocess.run(["bash", str(ROOT / "benchmarks/gpu/bringup.sh"), "--dry-run", "--wheels", str(tmp_path / "none"),
                    "--out", str(out)], check=True, timeout=600, capture_output=True)
    assert sorted(p.name for p in out.iterdir()) == ["artifacts.tar.gz", "bringup.json", "bringup.log"]
    report = json.loads((out / "bringup.json").read_text())
    assert set(report["steps"]) == STEPS
    assert all(s["rc"] == 0 and not s["timed_out"] for s in report["steps"].values()), report["steps"]
    head = report["headline"]
    assert head["gpu_tests"]["failures"] == 0 and head["gpu_tests"]["skipped"] == head["gpu_tests"]["tests"]
    assert all(c["ok"] and c["pd"] == c["balanced_pd"] == 24 for c in head["two_engines"])
    assert head["sim_vs_real"]["median_abs_error"] is not None
