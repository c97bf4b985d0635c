#!/usr/bin/env bash
# The main job on a fresh machine: environment, build, then training on the built-in corpus.
# Extra arguments go to `fastvae train` (for example: bash scripts/demo.sh --recipe cyclical).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
python -m fastvae.info
python -m fastvae train "$@"
