"""The layering, read from the source (every import statement, top level or inside a function):
core_api imports no backend and no torch; strategies import only core_api among our packages (and
no torch); sim imports no torch and nothing of real. So the simulator runs without torch, and a
strategy runs on both backends because it cannot reach either."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = {"core_api", "sim", "real", "strategies", "calibration", "experiments", "benchmarks", "tests"}
RULES = {  # package -> top-level modules it must never import
    "core_api": (OURS - {"core_api"}) | {"torch", "simpy", "zmq"},
    "strategies": (OURS - {"core_api", "strategies"}) | {"torch", "simpy", "zmq", "asyncio"},
    "sim": {"torch", "real", "zmq", "calibration", "experiments"},
}


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.add(node.module.split(".")[0])
    return out


@pytest.mark.parametrize("package", sorted(RULES))
def test_package_imports_respect_the_layering(package):
    bad = {str(f.relative_to(ROOT)): sorted(imports_of(f) & RULES[package])
           for f in sorted((ROOT / package).rglob("*.py"))}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{package} reaches past its layer: {bad}"


def test_the_checker_sees_imports_inside_functions(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import torch\n    from real.worker import EngineWorker\n")
    assert imports_of(f) == {"torch", "real"}
