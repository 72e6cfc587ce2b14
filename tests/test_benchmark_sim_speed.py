"""benchmarks/sim_speed.py runs and prints its table (its figures are not asserted: performance is
measured, never tested on this noisy machine)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "sim_speed.py"


def test_the_benchmark_prints_a_row_per_size_with_the_median_of_its_repeats():
    done = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "150", "--repeats", "2"],
                          capture_output=True, text=True, check=True)
    header, row = done.stdout.strip().splitlines()
    assert header.split()[:2] == ["requests", "ok"] and header.endswith("run s range")
    fields = row.split()
    assert fields[:2] == ["150", "150"]  # every request served
    low, high = (float(x) for x in fields[-1].split("-"))
    assert 0 < low <= float(fields[3]) <= high


def test_bad_sizes_are_refused():
    done = subprocess.run([sys.executable, str(SCRIPT), "--sizes", "0"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "--sizes and --repeats must be at least 1" in done.stderr
