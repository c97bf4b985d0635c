# Sourced by scripts/demo.sh and scripts/test.sh: get a Python environment with torch and an
# up-to-date fastvae build, reusing whatever is already there.
#   - uses the active virtual environment, or creates/reuses .venv in the checkout;
#   - installs torch only if it is missing (TORCH_SPEC, default torch==2.13.0, a CPU build here);
#   - rebuilds fastvae only when csrc/, setup.py, pyproject.toml or torch changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON_BIN="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

if [ -z "${VIRTUAL_ENV:-}" ]; then
  if [ ! -x .venv/bin/python ]; then
    echo "[fastvae] creating virtual environment .venv"
    "$PYTHON_BIN" -m venv .venv
  fi
  # shellcheck disable=SC1091
  source .venv/bin/activate
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1

if ! python -c "import torch" 2>/dev/null; then
  echo "[fastvae] installing $TORCH_SPEC"
  python -m pip install -q "$TORCH_SPEC"
fi

stamp_file="$VIRTUAL_ENV/.fastvae-build-stamp"
stamp="$( (cat setup.py pyproject.toml; find csrc -type f | sort | xargs cat; python -c 'import torch;print(torch.__version__)'; echo "${FASTVAE_CUDA:-}${TORCH_CUDA_ARCH_LIST:-}") | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$stamp_file" 2>/dev/null)" != "$stamp" ] || ! python -c "import fastvae._C" 2>/dev/null; then
  echo "[fastvae] installing build and test dependencies"
  python -m pip install -q setuptools wheel pybind11 ninja numpy tqdm matplotlib pytest pytest-benchmark hypothesis \
    "triton; platform_system == 'Linux' and platform_machine == 'x86_64'"
  echo "[fastvae] building fastvae and its compiled core (about a minute per C++ file on 2 cores)"
  MAX_JOBS="${MAX_JOBS:-$(nproc)}" python -m pip install -q --no-build-isolation -e ".[test]"
  echo "$stamp" > "$stamp_file"
else
  echo "[fastvae] build is up to date ($(python -c 'import fastvae;print(fastvae.__version__)'))"
fi
