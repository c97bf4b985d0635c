#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, build, pytest (CPU + Triton interpreter),
# the C++ unit tests (CMake + ctest), and the nvcc compile check of the CUDA kernels.
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

echo "[fastvae] pytest"
python -m fastvae.info
python -m pytest -q "$@"
