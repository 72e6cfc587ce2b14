"""Bring-up step 1: what the machine is (GPU, driver, torch, CUDA, flashinfer, nvcc), as JSON."""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=20).stdout.strip()[-2000:]
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dry-run", action="store_true")
    args = ap.parse_args()
    import torch

    query = "--query-gpu=name,memory.total,driver_version,clocks.max.sm"
    info: dict = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda_available": torch.cuda.is_available(),
                  "torch_cuda": torch.version.cuda, "nvidia_smi": _run(["nvidia-smi", query, "--format=csv"]),
                  "nvcc": _run(["nvcc", "--version"]), "dry_run": args.dry_run}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info["device"] = {"name": p.name, "memory_bytes": p.total_memory, "sm_count": p.multi_processor_count,
                          "capability": f"{p.major}.{p.minor}"}
    try:
        import flashinfer

        info["flashinfer"] = flashinfer.__version__
    except Exception as exc:  # noqa: BLE001 - reported: the attention falls back to torch without it
        info["flashinfer"] = f"not importable: {type(exc).__name__}: {exc}"
    from real.transports.nccl import nccl_available

    info["nccl_available"] = nccl_available()
    from importlib.metadata import PackageNotFoundError, version

    for dist in ("simpy", "pyzmq", "pydantic", "gguf", "apache-tvm-ffi"):
        try:
            info[dist] = version(dist)
        except PackageNotFoundError:
            info[dist] = "missing"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(info, indent=1) + "\n")
    print(json.dumps(info, indent=1))
    ok = info["cuda_available"] or args.dry_run
    return 0 if ok and not str(info["pydantic"]).startswith("missing") else 1


if __name__ == "__main__":
    sys.exit(main())
