#!/usr/bin/env bash
# The C++ unit tests: CMake build of csrc/ against the active environment's torch, then ctest.
# A CUDA build of torch makes its CMake config look for a CUDA toolkit of its own major version: this hands it
# the one setup.py finds (and nvrtc), and skips, saying why, when the toolkit's major version is another
# (torch 2.5's CUDA 12 config cannot load with CUDA 13's toolkit; the same C++ tests run against the CPU torch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p build
cuda_args=()
if python -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null; then
  toolkit="$(python -c 'import sys, torch; sys.path.insert(0, "buildtools"); import cuda_toolkit as t
try: home = t.find_cuda_home()[0]
except t.CudaToolkitNotFound: sys.exit()
problem = t.version_problem(t.toolkit_version(home), torch.version.cuda)
print("MISMATCH " + problem if problem else home)')"
  case "$toolkit" in
    MISMATCH*) echo "[ctest] skipped: torch's CMake config cannot be loaded here: ${toolkit#MISMATCH }"; exit 0 ;;
  esac
  [ -z "$toolkit" ] || cuda_args=(-DCUDA_TOOLKIT_ROOT_DIR="$toolkit" -DCUDAToolkit_ROOT="$toolkit")
  # nvrtc: the toolkit's, else the one torch imports (the nvidia-* runtime wheels)
  nvrtc="$(python -c 'import glob, os, sys, torch
site = os.path.dirname(os.path.dirname(torch.__file__))
found = sorted(glob.glob(os.path.join(sys.argv[1], "lib64", "libnvrtc.so*")) + glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so*")))
print(found[0] if found else "")' "${toolkit:-/nonexistent}")"
  [ -z "$nvrtc" ] || cuda_args+=(-DCUDA_nvrtc_LIBRARY="$nvrtc")
fi
cmake -S . -B build/cmake -G Ninja -DCMAKE_BUILD_TYPE=Release "${cuda_args[@]}" \
  -DCMAKE_PREFIX_PATH="$(python -c 'import torch; print(torch.utils.cmake_prefix_path)')" > build/cmake-configure.log 2>&1 \
  || { cat build/cmake-configure.log; exit 1; }
cmake --build build/cmake -j "$(nproc)"
ctest --test-dir build/cmake --output-on-failure
