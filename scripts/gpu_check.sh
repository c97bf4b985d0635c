#!/usr/bin/env bash
# Every GPU check in one call, for a lent GPU machine (see the README's "GPU checks"), most valuable first:
#   1. build fastvae._C with CUDA against the machine's torch,
#   2. the GPU tests (pytest -m gpu: the CUDA kernels, the fused cross-entropy's CUDA path, the Triton kernels
#      compiled for the GPU, training on the GPU in fp32 and bf16),
#   3. every benchmark suite on the GPU (benchmarks/run_all.py: the results JSON the README renders),
#   4. the whole test suite (pytest-xdist spreads it over the cores when the machine has it),
#   5. a reduced reproduction run (collapse vs remedies) on the built-in corpus (not in quick mode).
# Everything is written to a work folder ($GPU_WORK, default /tmp/fastvae-gpu; benchmarks/results/gpu-run
# without $OUT). With $OUT (the device tool's output folder, which returns at most 8 files) the script
# leaves there: summary.txt (each step's tail and status), and gpu-results.tar.gz (the whole work folder:
# build log, test logs, <hardware>.json + raw benchmark JSON, the reproduction table).
# Then, back on the development machine:
#   tar xzf gpu-results.tar.gz -C /tmp/gpu && cp /tmp/gpu/bench/*.json benchmarks/results/ \
#     && cp -r /tmp/gpu/bench/raw/* benchmarks/results/raw/ && python benchmarks/render.py
# Usage: bash scripts/gpu_check.sh [quick]     (quick: the benchmarks' quick mode, no reproduction)
# GPU_CHECK_BUDGET (seconds; default 540 in quick mode, else 3000) bounds the whole script: each step gets its
# own limit or what is left of the budget, whichever is less, so a step that overruns cannot take the steps
# after it down with the device tool's command limit. The summary and the archive in $OUT are refreshed after
# every step. With a 15-minute lease: `bash scripts/gpu_check.sh quick` in one call with timeout_s=600.
# The image's own torch and Triton are used (2026-12: torch 2.11, Triton 3.6, whose interpreter is too old for the
# kernels: the interpreter tests skip, the compiled GPU kernels run). FASTVAE_ALLOW_OLD_TRITON=1 would try a Triton
# older than fastvae.backend.MIN_TRITON / MIN_TRITON_GPU anyway.
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
BUDGET="${GPU_CHECK_BUDGET:-$([ -n "$QUICK" ] && echo 540 || echo 3000)}"
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
  local left=$((BUDGET - SECONDS - 15))
  if [ "$left" -lt 20 ]; then echo "[$name] skipped: the ${BUDGET}s budget is spent" | tee -a "$SUMMARY"; status=1; return 1; fi
  [ "$limit" -gt "$left" ] && limit=$left
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
run 360 build "$PY" -m pip install --no-build-isolation --no-deps -e . || finish
run 120 info "$PY" -m fastvae.info

step "GPU tests (pytest -m gpu)"
run 300 gpu-tests "$PY" -m pytest -q tests -m gpu -p no:cacheprovider -ra

step "benchmarks"
run 900 bench "$PY" benchmarks/run_all.py --device cuda --out "$WORK/bench" --suite-timeout "$([ -n "$QUICK" ] && echo 60 || echo 200)" ${QUICK:+--quick}

step "the whole test suite"
XDIST=()
if "$PY" -c "import xdist" 2>/dev/null; then XDIST=(-n "${GPU_TEST_WORKERS:-8}" --dist loadfile); fi
run 600 tests "$PY" -m pytest -q tests -p no:cacheprovider -ra "${XDIST[@]}"

if [ -z "$QUICK" ] && [ -f benchmarks/reproduce.py ]; then
  step "reduced reproduction"
  run 300 reproduce "$PY" benchmarks/reproduce.py --config tiny --budget small --device cuda --out "$WORK/reproduce"
fi
finish
