#!/usr/bin/env bash
# Levers for a lower bound in a fixed CPU budget (experiments/bits_budget/README.md). Each pilot is
# configs/fashion_mnist.yaml with one change, on one thread, a cosine planned over STEPS steps, seed 0, so the
# rows compare at equal steps; the run's own clock (train_seconds) gives the equal-wall-clock reading.
#   bash experiments/bits_budget/run.sh RUNS_DIR NAME STEPS [KEY=VALUE ...]
#   bash experiments/bits_budget/run.sh runs/bits p_uniform 3000
#   bash experiments/bits_budget/run.sh runs/bits p_vardeq 3000 model.dequantization=variational
# An interrupted pilot continues where it stopped (same command). Then it is scored on all 10,000 test images.
set -euo pipefail
RUNS=${1:?directory for the runs}; NAME=${2:?run name}; STEPS=${3:?planned steps}; shift 3
OUT=experiments/bits_budget/results
export OMP_NUM_THREADS=1
PY=${PYTHON:-python}
RESUME=(); [ -f "$RUNS/$NAME/checkpoint.pt" ] && RESUME=(--resume)
$PY -m flowvae train --config configs/fashion_mnist.yaml --out "$RUNS/$NAME" "${RESUME[@]}" "$@" \
  train.max_steps="$STEPS" train.max_minutes=0 train.threads=1 train.checkpoint_every=500 --no-progress
$PY -m flowvae evaluate --checkpoint "$RUNS/$NAME" --k 1 --no-progress --out "$OUT/eval_$NAME.json"
$PY - "$RUNS/$NAME" "$OUT/train_$NAME.json" "$@" <<'PY'
import json, sys
from flowvae.checkpoint import read_checkpoint
s = read_checkpoint(sys.argv[1])
json.dump({"step": s["step"], "train_minutes": round(s["train_seconds"] / 60, 1), "overrides": sys.argv[3:]},
          open(sys.argv[2], "w"), indent=2)
PY
