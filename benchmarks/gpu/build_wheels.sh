#!/usr/bin/env bash
# Wheels the GPU bring-up needs that the H200 machines' image lacks, for their Python 3.12 on
# manylinux x86-64, into DIR (default .whl/, ignored by git). They travel with the working tree,
# 64 MiB in all, so the list is the minimum (checked against the image's package list in
# benchmarks/gpu/README.md) and the total is checked here.
#   bash benchmarks/gpu/build_wheels.sh [DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."
DIR=${1:-.whl}
LIMIT_MIB=40
mkdir -p "$DIR"
# flashinfer 0.5.3: a 7 MB wheel that JIT-compiles its kernels with the machine's nvcc and ninja
# (0.7.x is 62 MB alone); apache-tvm-ffi is what it loads them with (imported by flashinfer.jit).
# Left out, read in its 0.5.3 source: nvidia-cudnn-frontend (imported under try/except, only its
# cuDNN attention backend needs it) and nvidia-cutlass-dsl (CuTe DSL kernels, hundreds of MB,
# not used by the paged prefill/decode wrappers this project calls).
PACKAGES=(
  flashinfer-python==0.5.3 apache-tvm-ffi==0.1.15.post2
  simpy==4.1.2 pyzmq==27.3.0 gguf==0.19.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  typing-extensions==4.16.0
)
PLATFORMS=()
for n in 17 24 26 27 28 31 34 35; do PLATFORMS+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 "${PLATFORMS[@]}" -d "$DIR" "${PACKAGES[@]}"
total=$(du -cm "$DIR"/*.whl | tail -1 | cut -f1)
echo "$(ls "$DIR"/*.whl | wc -l) wheels, ${total} MiB in $DIR"
if [ "$total" -gt "$LIMIT_MIB" ]; then
  echo "over ${LIMIT_MIB} MiB: the wheels and the working tree must stay under 64 MiB together" >&2
  exit 1
fi
