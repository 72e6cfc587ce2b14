#!/usr/bin/env bash
# GPU bring-up of the real backend, in one run: install from a local wheel folder (no network),
# then each step time-boxed, continuing past a failed step, every figure in one JSON file.
#
#   bash benchmarks/gpu/bringup.sh [--dry-run] [--wheels DIR] [--out DIR] [--only STEP,STEP]
#
# Steps: env, gpu_tests, two_engines, roofline, kv_transfer, calibrate (see benchmarks/gpu/README.md).
# Writes OUT/bringup.json (per step: exit code, seconds, timed out, its figures), OUT/bringup.log
# (everything printed) and OUT/artifacts.tar.gz (the fitted H200 profile, its report, samples and
# validation, the pytest report). OUT defaults to $OUT (the device machine's) or results/gpu_bringup.
# --dry-run walks every step on this CPU with small shapes, skipping what needs CUDA, so the
# script is known to start, time-box and report before it meets a GPU.
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
DRY=0
WHEELS=.whl
DEST=${OUT:-results/gpu_bringup}
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1 ;;
    --wheels) WHEELS=$2; shift ;;
    --out) DEST=$2; shift ;;
    --only) ONLY=$2; shift ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
mkdir -p "$DEST"
DEST=$(cd "$DEST" && pwd)
# Steps write into a scratch folder; DEST gets three files (the device machine returns at most 8).
WORK=$(mktemp -d)
mkdir -p "$WORK/steps" "$WORK/artifacts"
LOG=$DEST/bringup.log
: > "$LOG"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] && [ "$DRY" = 1 ] && PY=.venv/bin/python
export PYTHONUNBUFFERED=1
say() { echo "[bringup $(date +%H:%M:%S)] $*" | tee -a "$LOG"; }

# -- install: the wheels the image lacks, into a private target; the project from the tree ----
SITE=/tmp/microserving-site
TARGET=()
if [ "$DRY" = 1 ]; then
  SITE=$(mktemp -d)
  # Install for the GPU machines' interpreter (CPython 3.12, manylinux x86-64), not this one's.
  TARGET=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux2014_x86_64)
  for n in 17 24 26 27 28 31 34 35; do TARGET+=(--platform "manylinux_2_${n}_x86_64"); done
fi
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS (no index) into $SITE"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "${TARGET[@]}" "$WHEELS"/*.whl >>"$LOG" 2>&1; then
    say "install FAILED (see the log); continuing with what the image has"
  fi
else
  say "no wheels in $WHEELS: run benchmarks/gpu/build_wheels.sh here first (continuing with what is installed)"
fi
if [ "$DRY" = 1 ]; then
  # A dry run proves the wheels install offline, then runs on this checkout's own environment.
  rm -rf "$SITE"
else
  export PYTHONPATH="$ROOT:$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

STEPS_DONE=()
run_step() {  # name timeout_s command...
  local name=$1 limit=$2; shift 2
  if [ -n "$ONLY" ] && [[ ",$ONLY," != *",$name,"* ]]; then return; fi
  say "step $name (at most ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >>"$LOG" 2>&1
  local rc=$?
  local secs=$((SECONDS - t0))
  local timed_out=false
  if [ $rc = 124 ] || [ $rc = 137 ]; then timed_out=true; fi
  echo "{\"name\": \"$name\", \"rc\": $rc, \"seconds\": $secs, \"timed_out\": $timed_out, \"limit_s\": $limit}" \
    > "$WORK/steps/$name.meta.json"
  say "step $name: exit $rc in ${secs} s$([ "$timed_out" = true ] && echo ' (TIMED OUT)')"
  STEPS_DONE+=("$name")
  report  # after every step: what has run comes back even if the whole run is cut off
}

report() {
  "$PY" benchmarks/gpu/summarize.py "$WORK" >>"$LOG" 2>&1 || say "summary FAILED"
  cp "$WORK/bringup.json" "$DEST/bringup.json" 2>>"$LOG"
  tar -czf "$DEST/artifacts.tar.gz" -C "$WORK" artifacts steps 2>>"$LOG"
}

DRYFLAG=()
if [ "$DRY" = 1 ]; then
  DRYFLAG=(--dry-run)
  say "dry run on $(uname -m), no CUDA: skipped are flashinfer's kernels (the gpu tests skip), the cuda_ipc and nccl"
  say "transports, the Llama-3.1-8B shapes and the H200 roofline; every step runs its CPU stand-in instead"
fi

# Limits add up to 8.5 minutes (the device allows 10 per command; plan 9 with the install).
run_step env 30 "$PY" benchmarks/gpu/env_report.py --out "$WORK/steps/env.json" "${DRYFLAG[@]}"
run_step gpu_tests 120 "$PY" -m pytest -m gpu -q -p no:cacheprovider --junitxml "$WORK/artifacts/gpu_tests.xml" tests
run_step two_engines 120 "$PY" benchmarks/gpu/two_engines.py --out "$WORK/steps/two_engines.json" "${DRYFLAG[@]}"
run_step roofline 60 "$PY" benchmarks/gpu/roofline_check.py --out "$WORK/steps/roofline.json" "${DRYFLAG[@]}"
if [ "$DRY" = 1 ]; then
  run_step kv_transfer 60 "$PY" benchmarks/kv_transfer.py --sizes 1,4 --transports shm,zmq --repeats 1 \
    --json "$WORK/steps/kv_transfer.json"
  run_step calibrate 120 bash benchmarks/gpu/calibrate.sh --dry-run "$WORK/artifacts"
else
  run_step kv_transfer 45 "$PY" benchmarks/kv_transfer.py --device cuda:0 --sizes 16,64,256,1024 \
    --transports cuda_ipc,zmq --repeats 3 --json "$WORK/steps/kv_transfer.json"
  run_step calibrate 135 bash benchmarks/gpu/calibrate.sh "$WORK/artifacts"
fi

rm -rf "$WORK"
say "done: $DEST/bringup.json, $DEST/bringup.log, $DEST/artifacts.tar.gz"
cat "$DEST/bringup.json" 2>/dev/null | head -c 4000
