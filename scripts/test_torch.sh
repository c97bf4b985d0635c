#!/usr/bin/env bash
# scripts/test_torch.sh [SPEC] [pytest args]: the suite of scripts/test.sh (build, ctest, nvcc check, pytest; not
# the CUDA build check, which has its own torch, nor the sdist check) against another torch, by default the newest
# this machine may install (FASTVAE_SECOND_TORCH, torch==2.14.1: /etc/xdg/pip/constraints.txt caps torch there,
# PyPI itself has 2.15.0). It runs from a copy of the checkout in build/torch/<version>/src with its own
# environment build/torch/<version>/venv (kept between runs), so the checkout's .venv and its in-place
# fastvae/_C*.so are never touched.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SPEC="${1:-${FASTVAE_SECOND_TORCH:-torch==2.14.1}}"
[ $# -gt 0 ] && shift
case "$SPEC" in torch==[0-9]*) ;; *) echo "[torch] expected a spec like torch==2.14.1, got '$SPEC'" >&2; exit 2 ;; esac
want="${SPEC#torch==}"
WORK="$ROOT/build/torch/$want"
PY="${PYTHON:-python3}"
say() { echo "[torch $want] $*"; }
mkdir -p "$WORK"

venv="$WORK/venv"
[ -x "$venv/bin/python" ] || "$PY" -m venv "$venv"
have="$("$venv/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)"
if [ "$have" != "$want" ]; then
  say "installing $SPEC into $venv"
  if ! "$venv/bin/python" -m pip install -q "$SPEC"; then
    index="${PIP_INDEX_URL:-https://pypi.org/simple}"
    if ! "$PY" -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=30)" \
         "$index" 2>/dev/null; then
      say "skipped: $SPEC is not installable and the package index $index cannot be reached"; exit 0
    fi
    say "FAILED: pip could not install $SPEC"; exit 1
  fi
fi
say "$("$venv/bin/python" -c 'import torch; print("torch", torch.__version__, "CUDA build:", torch.version.cuda)' 2>/dev/null)"

bash "$ROOT/scripts/copy_tree.sh" "$WORK/src"
start=$(date +%s)
# The copy is not beside ../shared: name it, so the tests on real text run here too.
shared="${FASTVAE_SHARED:-$(cd "$ROOT/.." && pwd)/shared}"
( cd "$WORK/src" && env VIRTUAL_ENV="$venv" PATH="$venv/bin:$PATH" FASTVAE_SKIP_CUDA_BUILD=1 FASTVAE_SKIP_SDIST=1 \
    FASTVAE_SKIP_SECOND_TORCH=1 FASTVAE_SHARED="$shared" \
    bash scripts/test.sh "$@" )
say "passed in $(( $(date +%s) - start )) s"
