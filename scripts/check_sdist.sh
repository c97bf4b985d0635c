#!/usr/bin/env bash
# The distribution as a user gets it: an sdist built from a copy of this checkout, compiled into a wheel with
# --no-build-isolation in a fresh environment holding only torch and the build requirements, then that wheel
# installed into a second fresh environment (torch and fastvae's declared dependencies, no compiler
# tools, no source tree) where it must import, report its build, and train on the built-in corpus.
# Everything lives in build/sdist-check/ (the environments are kept between runs, the sdist and wheel are not).
#   TORCH_SPEC   the torch of both environments (default torch==2.13.0, the CPU build on this machine)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/build/sdist-check"
SPEC="${TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"
say() { echo "[sdist] $*"; }
mkdir -p "$WORK"
rm -rf "$WORK/dist" "$WORK/wheels" "$WORK/src" "$WORK/run"

fresh_env() {  # fresh_env DIR PACKAGES...: a venv with torch and PACKAGES, reused when torch matches
  local dir="$1"; shift
  [ -x "$dir/bin/python" ] || "$PY" -m venv "$dir"
  if [ "$("$dir/bin/python" -c 'import torch; print(torch.__version__.split("+")[0])' 2>/dev/null || true)" \
       != "${SPEC#torch==}" ]; then
    "$dir/bin/python" -m pip install -q "$SPEC"
  fi
  [ $# -eq 0 ] || "$dir/bin/python" -m pip install -q "$@"
  # an earlier run's fastvae must not answer for this one
  "$dir/bin/python" -m pip uninstall -q -y fastvae 2>/dev/null || true
}

say "build environment: $SPEC + the [build-system] requirements + build"
fresh_env "$WORK/build-env" setuptools wheel "pybind11>=2.12" ninja build
# The sdist is made from a copy of the tracked files, so nothing built in the checkout can leak into it.
bash "$ROOT/scripts/copy_tree.sh" "$WORK/src"
# Run from $WORK: in the checkout's root, its build/ folder would shadow the `build` package.
(cd "$WORK" && "$WORK/build-env/bin/python" -m build --sdist --no-isolation --outdir "$WORK/dist" "$WORK/src" \
   > "$WORK/sdist.log" 2>&1) || { tail -30 "$WORK/sdist.log"; say "FAILED: python -m build --sdist"; exit 1; }
sdist="$(ls "$WORK"/dist/fastvae-*.tar.gz)"
tar -tzf "$sdist" | sed 's|^fastvae-[^/]*/||' > "$WORK/dist/contents.txt"
say "$(basename "$sdist"): $(wc -l < "$WORK/dist/contents.txt") files"
has() { grep -qxF "$1" "$WORK/dist/contents.txt" || { say "FAILED: the sdist lacks $1"; exit 1; }; }
for needed in setup.py pyproject.toml MANIFEST.in csrc/sources.txt csrc/ops.cpp buildtools/cuda_toolkit.py \
              fastvae/kernels/__init__.py; do
  has "$needed"
done
for source in $(awk '!/^#/ && NF >= 2 {print $2}' "$ROOT/csrc/sources.txt"); do  # every file setup.py compiles
  has "$source"
done
for header in $(cd "$ROOT" && git ls-files 'csrc/*.h' 'csrc/**/*.h'); do
  has "$header"
done

say "pip wheel --no-build-isolation from the sdist (compiles fastvae._C against $SPEC)"
start=$(date +%s)
(cd "$WORK" && MAX_JOBS="${MAX_JOBS:-$(nproc)}" "$WORK/build-env/bin/python" -m pip wheel -v --no-build-isolation \
   --no-deps "$sdist" -w "$WORK/wheels" > "$WORK/wheel.log" 2>&1) \
  || { tail -40 "$WORK/wheel.log"; say "FAILED: building the wheel from the sdist (log: $WORK/wheel.log)"; exit 1; }
wheel="$(ls "$WORK"/wheels/fastvae-*.whl)"
say "built $(basename "$wheel") in $(( $(date +%s) - start )) s"

say "a fresh environment with $SPEC, then the wheel and its declared dependencies"
fresh_env "$WORK/user-env"
"$WORK/user-env/bin/python" -m pip install -q "$wheel"
# From $WORK/run, far from any source tree: only the installed wheel can answer.
mkdir -p "$WORK/run"
cd "$WORK/run"
"$WORK/user-env/bin/python" - <<'EOF'
import os
import fastvae
import fastvae._C  # noqa: F401  the compiled core shipped in the wheel
from fastvae import backend
here = os.path.dirname(fastvae.__file__)
assert "site-packages" in here, f"fastvae imported from {here}, not from the installed wheel"
assert backend.cpp_available("cpu"), backend.compiled_core_error()
import fastvae.kernels  # noqa: F401  the Triton kernels (fastvae/kernels/)
print(f"[sdist] imported fastvae {fastvae.__version__} from {here}")
EOF
"$WORK/user-env/bin/python" -m fastvae.info
"$WORK/user-env/bin/fastvae" train --epochs 1 --iw-samples 2 --examples 0 --no-progress --json --out "$WORK/run/out" \
  > "$WORK/run/report.json"
"$WORK/user-env/bin/python" - "$WORK/run/report.json" <<'EOF'
import json, math, sys
report = json.loads([line for line in open(sys.argv[1]) if line.startswith("{")][-1])
test = report["test"]
assert all(math.isfinite(test[k]) for k in ("rec", "kl", "elbo", "nll")), test
print(f"[sdist] trained from the wheel: test ELBO {test['elbo']:.2f}, NLL {test['nll']:.2f}, KL {test['kl']:.3f}")
EOF
say "passed"
