#!/usr/bin/env bash
# The CUDA build of fastvae._C, checked on a machine without a GPU: an environment with a CUDA build of torch
# (the wheel the package index serves; cached in build/cuda-check between runs), fastvae built from a copy of
# this checkout with FASTVAE_CUDA=1 for the architectures users have, then scripts/cuda_build_report.py:
# import without a driver, `fastvae.info` reports CUDA, every op of csrc/ops.cpp has a CUDA kernel.
# Skips (exit 0) only when the package index cannot be reached, or when there is no CUDA toolkit and
# FASTVAE_REQUIRE_CUDA_CHECK is not 1 (CI sets it).
#   TORCH_CUDA_SPEC             the CUDA torch to build against (default torch==2.13.0: CUDA 13.0, as nvcc here)
#   FASTVAE_CHECK_CUDA_ARCHS    TORCH_CUDA_ARCH_LIST for the build (default: the one setup.py makes)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
WORK="$ROOT/build/cuda-check"
SPEC="${TORCH_CUDA_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"
say() { echo "[cuda build] $*"; }
skip() {
  if [ "${FASTVAE_REQUIRE_CUDA_CHECK:-0}" = 1 ] && [ "${2:-}" != index ]; then say "FAILED: $1"; exit 1; fi
  say "skipped: $1"; exit 0
}
mkdir -p "$WORK"

toolkit="$("$PY" -c 'import sys; sys.path.insert(0, "buildtools"); import cuda_toolkit as t
try: print(t.find_cuda_home()[0])
except t.CudaToolkitNotFound as e: print("ERROR " + str(e))')"
case "$toolkit" in ERROR*) skip "${toolkit#ERROR }" ;; esac
say "CUDA toolkit: $toolkit ($("$toolkit/bin/nvcc" --version | tail -1))"

# The index itself, not this machine's local wheels (which hold the CPU build of the same version).
INDEX="${PIP_INDEX_URL:-https://pypi.org/simple}"
if ! "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=30)" \
     "$INDEX" 2>/dev/null; then
  skip "the package index $INDEX cannot be reached, so no CUDA build of torch can be fetched" index
fi

venv="$WORK/venv"
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
want="${SPEC#torch==}"
have="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0] if torch.version.cuda else "cpu")' \
  2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  say "fetching the CUDA build of $SPEC from $INDEX (about 530 MB; pip's cache keeps it)"
  rm -rf "$WORK/wheels"
  env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null PIP_INDEX_URL="$INDEX" \
    "$venv/bin/python" -m pip download -q --no-deps "$SPEC" -d "$WORK/wheels"
  wheel="$(ls "$WORK"/wheels/torch-*.whl)"
  case "$wheel" in *+cpu*) say "FAILED: the index served a CPU build ($wheel)"; exit 1 ;; esac
  say "installing $(basename "$wheel") and the CUDA runtime wheels it imports"
  "$venv/bin/python" -m pip install -q "$wheel"
fi
"$venv/bin/python" -m pip install -q setuptools wheel pybind11 ninja numpy tqdm matplotlib

say "building fastvae._C with CUDA for ${FASTVAE_CHECK_CUDA_ARCHS:-the default architectures of setup.py} from a copy of the checkout"
bash scripts/copy_tree.sh "$WORK/src"
start=$(date +%s)
( cd "$WORK/src" && env ${FASTVAE_CHECK_CUDA_ARCHS:+TORCH_CUDA_ARCH_LIST="$FASTVAE_CHECK_CUDA_ARCHS"} FASTVAE_CUDA=1 \
    MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$venv/bin/python" -m pip install -v --no-build-isolation --no-deps . ) > "$WORK/build.log" 2>&1 \
  || { tail -60 "$WORK/build.log"; say "FAILED: the CUDA build (log: $WORK/build.log)"; exit 1; }
say "built in $(( $(date +%s) - start )) s"
# every architecture the build recorded reached nvcc (machine code for each, PTX for the +PTX one)
cd "$WORK"
ARCHS="$("$venv/bin/python" -c 'from fastvae._build_info import BUILD_INFO; print(BUILD_INFO["cuda_arch_list"] or "")')"
[ -n "$ARCHS" ] || { say "FAILED: the build recorded no CUDA architectures"; exit 1; }
for arch in $(echo "$ARCHS" | tr ';' ' '); do
  num="${arch%+PTX}"; num="${num/./}"
  grep -q "arch=compute_$num,code=sm_$num" "$WORK/build.log" || { say "FAILED: no sm_$num code in the build"; exit 1; }
  case "$arch" in *+PTX) grep -q "arch=compute_$num,code=compute_$num" "$WORK/build.log" \
    || { say "FAILED: no compute_$num PTX in the build"; exit 1; } ;; esac
done
"$venv/bin/python" "$ROOT/scripts/cuda_build_report.py"
