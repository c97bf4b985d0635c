#!/usr/bin/env bash
# Every GPU check in one call, for a lent GPU machine (see the README's "GPU checks"):
#   1. build fastvae._C with CUDA against the machine's torch,
#   2. run the whole test suite (the GPU tests run instead of skipping),
#   3. run every benchmark suite on the GPU (benchmarks/run_all.py: the results JSON the README renders),
#   4. a reduced reproduction run (collapse vs remedies) on the built-in corpus.
# Everything is written to a work folder ($GPU_WORK, default /tmp/fastvae-gpu; benchmarks/results/gpu-run
# without $OUT). With $OUT (the device tool's output folder, which returns at most 8 files) the script
# leaves there: summary.txt (each step's tail and status), and gpu-results.tar.gz (the whole work folder:
# build log, test log, <hardware>.json + raw benchmark JSON, the reproduction table).
# Then, back on the development machine:
#   tar xzf gpu-results.tar.gz -C /tmp/gpu && cp /tmp/gpu/bench/*.json benchmarks/results/ \
#     && cp -r /tmp/gpu/bench/raw/* benchmarks/results/raw/ && python benchmarks/render.py
# Usage: bash scripts/gpu_check.sh [quick]     (quick: the benchmarks' quick mode)
# Each step has its own time limit; the device tool's 10-minute command limit can still stop the whole
# script, so the summary and the archive in $OUT are refreshed after every step. With a 15-minute lease:
# `bash scripts/gpu_check.sh quick` in one call with timeout_s=600.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -n "${OUT:-}" ]; then WORK="${GPU_WORK:-/tmp/fastvae-gpu}"; else WORK="${GPU_WORK:-$ROOT/benchmarks/results/gpu-run}"; fi
rm -rf "$WORK"  # a rerun on a still-warm machine must not pack the previous run's files
mkdir -p "$WORK"
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
QUICK="${1:-}"
step() { echo; echo "=== $* ===" | tee -a "$SUMMARY"; }
# the results so far into $OUT: a command killed at the device tool's limit still returns every finished step
snapshot() {
  if [ -n "${OUT:-}" ]; then
    cp "$SUMMARY" "$OUT/summary.txt"
    tar czf "$OUT/gpu-results.tar.gz.part" -C "$WORK" . && mv "$OUT/gpu-results.tar.gz.part" "$OUT/gpu-results.tar.gz"
  fi
}
# run SECONDS NAME CMD...: the command (stopped after SECONDS) with its whole output in $WORK/NAME.log, its
# tail in the summary; failures counted
run() {
  local limit="$1" name="$2"; shift 2
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -25 "$WORK/$name.log" | tee -a "$SUMMARY"
  if [ $rc -eq 124 ] || [ $rc -eq 137 ]; then echo "[$name] stopped at its ${limit}s limit" | tee -a "$SUMMARY"; fi
  echo "[$name] exit $rc" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || status=1
  snapshot
  return $rc
}
finish() {
  echo "gpu_check: overall status $status" | tee -a "$SUMMARY"
  snapshot
  exit $status
}
trap 'status=1; echo "gpu_check: stopped by a signal" | tee -a "$SUMMARY"; finish' TERM INT

step "environment"
run 60 gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run 120 versions "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

step "build (FASTVAE_CUDA=1)"
export FASTVAE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
run 600 build "$PY" -m pip install --no-build-isolation --no-deps -e . || finish
run 120 info "$PY" -m fastvae.info

step "tests (GPU tests included)"
run 600 tests "$PY" -m pytest -q tests -p no:cacheprovider -ra

step "benchmarks"
run 900 bench "$PY" benchmarks/run_all.py --device cuda --out "$WORK/bench" --suite-timeout 200 ${QUICK:+--quick}

if [ -f benchmarks/reproduce.py ]; then
  step "reduced reproduction"
  run 300 reproduce "$PY" benchmarks/reproduce.py --config tiny --budget small --device cuda --out "$WORK/reproduce"
fi
finish
