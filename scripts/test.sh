#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, build, pytest (CPU + Triton interpreter),
# the C++ unit tests (CMake + ctest), the nvcc compile check of the CUDA kernels, and the CUDA build of
# fastvae._C against a CUDA torch (scripts/check_cuda_build.sh; FASTVAE_SKIP_CUDA_BUILD=1 leaves it out).
# Extra arguments go to pytest (for example: bash scripts/test.sh -k kl -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

mkdir -p build
echo "[fastvae] C++ unit tests (CMake + ctest)"
cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" > build/cmake-configure.log 2>&1 \
  || { cat build/cmake-configure.log; exit 1; }
cmake --build build/cmake -j "$(nproc)"
ctest --test-dir build/cmake --output-on-failure

echo "[fastvae] CUDA compile check"
bash scripts/check_cuda_compile.sh

echo "[fastvae] CUDA build check (CUDA torch from the index, FASTVAE_CUDA=1, every op registered for CUDA)"
if [ "${FASTVAE_SKIP_CUDA_BUILD:-0}" = 1 ]; then echo "[cuda build] skipped: FASTVAE_SKIP_CUDA_BUILD=1"
else (unset VIRTUAL_ENV; bash scripts/check_cuda_build.sh); fi

echo "[fastvae] pytest"
python -m fastvae.info
python -m pytest -q "$@"
