#!/usr/bin/env bash
# Compile-only check of every torch-free CUDA kernel (csrc/sources.txt, kind "kernel") with nvcc,
# so CUDA code that does not compile is caught on machines without a GPU.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
NVCC="${NVCC:-$(command -v nvcc || true)}"
if [ -z "$NVCC" ] && [ -x /usr/local/cuda/bin/nvcc ]; then NVCC=/usr/local/cuda/bin/nvcc; fi
if [ -z "$NVCC" ]; then
  echo "[nvcc check] nvcc not found: skipped"
  exit 0
fi
ARCH="${NVCC_ARCH:-sm_90}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
n=0
while read -r kind path; do
  [ "$kind" = "kernel" ] || continue
  echo "[nvcc check] $path ($ARCH)"
  # the kernels are torch-free: nvcc's own default standard (C++17 in CUDA 12/13) is what they are written for
  "$NVCC" -c -O3 -arch="$ARCH" -Icsrc "$path" -o "$out/$(basename "$path").o"
  n=$((n + 1))
done < <(sed -e 's/#.*//' csrc/sources.txt | awk 'NF == 2')
echo "[nvcc check] $n CUDA kernel file(s) compiled with $("$NVCC" --version | tail -1)"
