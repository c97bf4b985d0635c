#!/usr/bin/env bash
# The whole test suite on a fresh machine: environment, build, pytest (CPU + Triton interpreter),
# the C++ unit tests (CMake + ctest), the nvcc compile check of the CUDA kernels, and the CUDA build of
# fastvae._C against a CUDA torch (scripts/check_cuda_build.sh; FASTVAE_SKIP_CUDA_BUILD=1 leaves it out), the
# sdist built and installed as a user gets it (scripts/check_sdist.sh; FASTVAE_SKIP_SDIST=1), and all of this
# again against a second torch (scripts/test_torch.sh, the newest on the index; FASTVAE_SKIP_SECOND_TORCH=1).
# Extra arguments go to pytest (for example: bash scripts/test.sh -k kl -x).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"

echo "[fastvae] C++ unit tests (CMake + ctest)"
bash scripts/ctest.sh

echo "[fastvae] CUDA compile check"
bash scripts/check_cuda_compile.sh

echo "[fastvae] CUDA build check (CUDA torch from the index, FASTVAE_CUDA=1, every op registered for CUDA)"
if [ "${FASTVAE_SKIP_CUDA_BUILD:-0}" = 1 ]; then echo "[cuda build] skipped: FASTVAE_SKIP_CUDA_BUILD=1"
else (unset VIRTUAL_ENV; bash scripts/check_cuda_build.sh); fi

echo "[fastvae] pytest"
python -m fastvae.info
python -m pytest -q "$@"

echo "[fastvae] sdist check (sdist -> wheel with --no-build-isolation -> a fresh environment: import, info, training)"
if [ "${FASTVAE_SKIP_SDIST:-0}" = 1 ]; then echo "[sdist] skipped: FASTVAE_SKIP_SDIST=1"
else (unset VIRTUAL_ENV; bash scripts/check_sdist.sh); fi

echo "[fastvae] the suite against a second torch (${FASTVAE_SECOND_TORCH:-torch==2.14.1}, from a copy of the checkout)"
if [ "${FASTVAE_SKIP_SECOND_TORCH:-0}" = 1 ]; then echo "[torch] skipped: FASTVAE_SKIP_SECOND_TORCH=1"
else (unset VIRTUAL_ENV; bash scripts/test_torch.sh "${FASTVAE_SECOND_TORCH:-torch==2.14.1}" "$@"); fi
