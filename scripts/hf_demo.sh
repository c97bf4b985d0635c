#!/usr/bin/env bash
# The transformer VAE's CPU demo (issue 19): posterior collapse without a remedy, active units with one.
#   1. builds a tiny Transformer pair "trained from scratch" (random weights): a 2-layer, 64-dim GPT-2-style decoder
#      and BERT-style encoder, tokenizers trained on the built-in grammar corpus (python -m fastvae.hf.scratch);
#   2. trains it on the built-in corpus (10,000 training sentences) with `fastvae train --encoder --decoder`:
#      - vae:         the plain ELBO (KL weight 1 from the start), 12 epochs;
#      - pretrain-fb: Li et al. 2019: 4 epochs as an autoencoder (KL weight 0), then the decoder re-initialised
#                     (--reset-decoder on, the papers' setting for a decoder trained from scratch) and 8 epochs with
#                     free bits (8 nats per sentence) while the KL weight rises 0 -> 1 over 4 epochs;
#      - cyclical:    Fu et al. 2019: 4 cycles of 3 epochs, the KL weight 0 -> 1 over each cycle's first half;
#      all with Adam at lr 1e-3, latent 32, z injected as memory + embedding (Optimus), batch 32, one thread;
#   3. prints the test metrics of each run side by side (AU, KL, MI, rec, IW-NLL with 50 samples).
# About 2 minutes per recipe on one core of a 2026 server CPU (benchmarks/results/hf-demo-cpu.md); the whole script
# about 7. Outputs under $HF_DEMO_DIR (default runs/hf-demo): pair/, one run directory per recipe, <recipe>.log.
# Extra arguments go to every `fastvae train` (for example: bash scripts/hf_demo.sh --seed 1).
# HF_DEMO_RECIPES (default "vae pretrain-fb cyclical") picks the runs; HF_DEMO_THREADS (default 1) the threads;
# HF_DEMO_SKIP_SETUP=1 uses the current Python environment as it is (no scripts/env.sh: no install or rebuild check).
# With a GPU and a real pretrained pair, the same comparison is (README, "Transformer VAEs"):
#   fastvae train --encoder bert-base-uncased --decoder gpt2 --recipe pretrain-fb --data DIR --device cuda ...
set -euo pipefail
if [ "${HF_DEMO_SKIP_SETUP:-0}" = 1 ]; then
  cd "$(dirname "${BASH_SOURCE[0]}")/.."
else
  source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
fi
if ! python -c "import transformers, tokenizers" 2>/dev/null; then
  echo "[fastvae] installing the hf extra (transformers, tokenizers)"
  python -m pip install -q "transformers>=4.45" "tokenizers>=0.19"  # pyproject.toml's [hf] extra
fi
DIR="${HF_DEMO_DIR:-runs/hf-demo}"
RECIPES="${HF_DEMO_RECIPES:-vae pretrain-fb cyclical}"
THREADS="${HF_DEMO_THREADS:-1}"
mkdir -p "$DIR"

echo "=== a Transformer pair trained from scratch (random weights): $DIR/pair"
python -m fastvae.hf.scratch "$DIR/pair" --corpus grammar --layers 2 --dim 64 --heads 2

COMMON=(--encoder "$DIR/pair/encoder" --decoder "$DIR/pair/decoder" --latent-dim 32 --inject both
        --optimizer adam --lr 1e-3 --batch-size 32 --iw-samples 50 --threads "$THREADS" --no-progress
        --examples 2 --overwrite)
declare -A OPTIONS=(
  [vae]="--epochs 12"
  [pretrain-fb]="--pretrain-epochs 4 --epochs 8 --warm-up 4 --reset-decoder on --target-kl 8"
  [cyclical]="--epochs 12 --cycles 4"
  [aggressive]="--epochs 12"
  [beta]="--epochs 12 --beta 0.4"
)
declare -A TIMES=()
for recipe in $RECIPES; do
  if [ -z "${OPTIONS[$recipe]+set}" ]; then echo "unknown recipe in HF_DEMO_RECIPES: $recipe" >&2; exit 2; fi
  # shellcheck disable=SC2206
  options=(${OPTIONS[$recipe]})
  echo
  echo "=== fastvae train --recipe $recipe ${options[*]} (log: $DIR/$recipe.log)"
  start=$SECONDS
  fastvae train "${COMMON[@]}" --recipe "$recipe" "${options[@]}" --out "$DIR/$recipe" "$@" 2>&1 | tee "$DIR/$recipe.log"
  TIMES[$recipe]=$((SECONDS - start))
done

echo
TIMINGS=""
for recipe in $RECIPES; do TIMINGS="$TIMINGS $recipe=${TIMES[$recipe]}"; done
python - "$DIR" "$TIMINGS" $RECIPES <<'EOF'
import json
import os
import sys

directory, timings, recipes = sys.argv[1], dict(t.split("=") for t in sys.argv[2].split()), sys.argv[3:]
print("test metrics (best checkpoint; AU: active units of 32, KL and rec in nats per sentence, MI in nats, "
      "IW-NLL with 50 samples)")
print(f"{'recipe':<12} {'AU':>3} {'KL':>7} {'MI':>6} {'rec':>7} {'NLL':>7} {'seconds':>8}")
for recipe in recipes:
    with open(os.path.join(directory, recipe, "metrics.jsonl")) as handle:
        test = [row for row in map(json.loads, handle) if row.get("split") == "test"][-1]
    print(f"{recipe:<12} {test['au']:>3} {test['kl']:>7.3f} {test['mi']:>6.2f} {test['rec']:>7.2f} "
          f"{test['nll']:>7.2f} {timings[recipe]:>8}")
print("collapse: AU 0 and KL ~ 0 (the decoder ignores z); a remedy keeps units active (KL > 0, MI > 0)")
EOF
