#!/usr/bin/env bash
# Every GPU check in one call, for a lent GPU machine (see the README's "GPU checks"):
#   1. build fastvae._C with CUDA against the machine's torch,
#   2. run the whole test suite (the GPU tests run instead of skipping),
#   3. run the benchmark suites on the GPU,
#   4. a reduced reproduction run (collapse vs remedies) on the built-in corpus.
# Results go to $OUT (the device tool's output folder) or benchmarks/results/gpu-run/.
# Usage: bash scripts/gpu_check.sh [quick]
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
RESULTS="${OUT:-$ROOT/benchmarks/results/gpu-run}"
mkdir -p "$RESULTS"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0
step() { echo; echo "=== $* ==="; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$RESULTS/gpu.txt"
"$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" | tee -a "$RESULTS/gpu.txt"

step "build (FASTVAE_CUDA=1)"
export FASTVAE_CUDA=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}"
"$PY" -m pip install -q --no-build-isolation --no-deps -e . > "$RESULTS/build.log" 2>&1 || { tail -50 "$RESULTS/build.log"; exit 1; }
"$PY" -m fastvae.info | tee "$RESULTS/info.txt"

step "tests (GPU tests included)"
"$PY" -m pytest -q -x tests -p no:cacheprovider 2>&1 | tail -30 | tee "$RESULTS/tests.txt" || status=1

step "benchmarks"
for suite in benchmarks/bench_*.py; do
  name="$(basename "$suite" .py)"; name="${name#bench_}"
  "$PY" -m pytest -q "$suite" --benchmark-only --benchmark-json="$RESULTS/gpu-$name.json" ${1:+-k quick} \
    -p no:cacheprovider 2>&1 | tail -40 | tee "$RESULTS/bench-$name.txt" || status=1
done

if [ -f benchmarks/reproduce.py ]; then
  step "reduced reproduction"
  "$PY" benchmarks/reproduce.py --config tiny --budget small --device cuda --out "$RESULTS/reproduce" \
    2>&1 | tail -40 | tee "$RESULTS/reproduce.txt" || status=1
fi
exit $status
