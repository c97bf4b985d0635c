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
# Usage: bash scripts/gpu_check.sh [quick]     (quick: the benchmarks' quick mode; a 15-minute lease fits both)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -n "${OUT:-}" ]; then WORK="${GPU_WORK:-/tmp/fastvae-gpu}"; else WORK="${GPU_WORK:-$ROOT/benchmarks/results/gpu-run}"; fi
mkdir -p "$WORK"
SUMMARY="$WORK/summary.txt"
: > "$SUMMARY"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
QUICK="${1:-}"
step() { echo; echo "=== $* ===" | tee -a "$SUMMARY"; }
# run NAME CMD...: the command's whole output to $WORK/NAME.log, its tail to the summary; failures counted
run() {
  local name="$1"; shift
  "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  tail -25 "$WORK/$name.log" | tee -a "$SUMMARY"
  echo "[$name] exit $rc" | tee -a "$SUMMARY"
  [ $rc -eq 0 ] || status=1
  return $rc
}
finish() {
  echo "gpu_check: overall status $status" | tee -a "$SUMMARY"
  if [ -n "${OUT:-}" ]; then
    cp "$SUMMARY" "$OUT/summary.txt"
    tar czf "$OUT/gpu-results.tar.gz" -C "$WORK" .
  fi
  exit $status
}

step "environment"
run gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
run versions "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"

step "build (FASTVAE_CUDA=1)"
export FASTVAE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
run build "$PY" -m pip install --no-build-isolation --no-deps -e . || finish
run info "$PY" -m fastvae.info

step "tests (GPU tests included)"
run tests "$PY" -m pytest -q tests -p no:cacheprovider -ra

step "benchmarks"
run bench "$PY" benchmarks/run_all.py --device cuda --out "$WORK/bench" --suite-timeout 240 ${QUICK:+--quick}

if [ -f benchmarks/reproduce.py ]; then
  step "reduced reproduction"
  run reproduce "$PY" benchmarks/reproduce.py --config tiny --budget small --device cuda --out "$WORK/reproduce"
fi
finish
