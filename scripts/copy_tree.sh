#!/usr/bin/env bash
# copy_tree.sh DEST: a copy of this checkout's sources (tracked files and untracked ones git does not ignore)
# in DEST, for builds that must not touch the checkout (a second torch, the CUDA build). Each build writes
# fastvae/_C*.so and fastvae/_build_info.py into its own tree, so two builds can never share one.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$1"
rm -rf "$dest"
mkdir -p "$dest"
cd "$ROOT"
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"   # skip files deleted in the work tree but not yet in the index
  done | tar --null -T - -cf - | tar -xf - -C "$dest"
else  # an unpacked sdist: no git, no build outputs to leave out except these
  tar --exclude=./build --exclude=./.venv --exclude='*.so' --exclude=./fastvae/_build_info.py -cf - . \
    | tar -xf - -C "$dest"
fi
