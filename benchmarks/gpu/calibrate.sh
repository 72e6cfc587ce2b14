#!/usr/bin/env bash
# Bring-up step: profile the engine on the GPU, fit the step model, validate sim vs real
# (round_robin and PD, below and above saturation). Writes into DIR the profile as it would be
# committed (h200-llama-3.1-8b.json) with its report, samples and validation.
#   bash benchmarks/gpu/calibrate.sh [--dry-run] DIR
set -euo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
DIR=${1:?usage: calibrate.sh [--dry-run] DIR}
PY=${PYTHON:-python3}
[ "$DRY" = 1 ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
CLI=("$PY" -m microserving.cli calibrate)
if [ "$DRY" = 1 ]; then
  NAME=dryrun-cpu-tiny
  ENGINE=(--model tiny --num-pages 512)
  PROFILE=(--grid benchmarks/gpu/dry_grid.json --rounds 1 --repeats 3 --no-transfers)
  VALIDATE=(--num-requests 20 --load 0.5 --load 1.5 --no-interval)
else
  NAME=h200-llama-3.1-8b
  # Fast kernels (flashinfer, batched GEMMs): what a GPU deployment runs; 20,000 pages of 16
  # tokens (40 GB of KV) per engine, so two engines and their weights fit one H200.
  ENGINE=(--model llama-3.1-8b --device cuda:0 --dtype bfloat16 --fast --num-pages 20000
          --max-num-batched-tokens 2048 --max-num-seqs 256 --stream-interval 0)
  PROFILE=(--grid benchmarks/gpu/h200_grid.json --rounds 1 --repeats 4)
  VALIDATE=(--num-requests 60 --load 0.5 --load 1.5 --no-interval --no-pin)
fi
"${CLI[@]}" profile "${ENGINE[@]}" "${PROFILE[@]}" --out "$DIR/$NAME.samples.json"
"${CLI[@]}" fit "$DIR/$NAME.samples.json" --out "$DIR/$NAME.json"
"${CLI[@]}" validate --profile "$DIR/$NAME.json" --strategy round_robin --strategy pd "${VALIDATE[@]}" \
  --out "$DIR/$NAME.validation.json"
