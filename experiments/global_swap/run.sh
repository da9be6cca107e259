#!/usr/bin/env bash
# A late KL weight below 1 on the recommended recipe (experiments/global_swap/README.md). From the finished
# 9,172-step run of configs/fashion_mnist.yaml (what ships as pretrained:fashion_mnist), 2,000 more steps
# with the training loss's KL weight 0.3, and the control: the same 2,000 steps with weight 1. Raising
# train.max_steps on --resume re-plans the cosine over 11,172 steps from here on, so both continue at
# lr 1.6e-4 decaying to 0; the reported bound always uses weight 1.
#   bash experiments/global_swap/run.sh RUNS_DIR          (RUNS_DIR/fm: the finished base run; trained if absent)
set -euo pipefail
RUNS=${1:?directory for the runs}
export OMP_NUM_THREADS=1
PY=${PYTHON:-python}
[ -f "$RUNS/fm/checkpoint.pt" ] || $PY -m flowvae train --config configs/fashion_mnist.yaml --out "$RUNS/fm" train.threads=1
for run in fm_b03:0.3 fm_more:1; do
  name=${run%%:*}; beta=${run##*:}
  rm -rf "${RUNS:?}/$name" && cp -r "$RUNS/fm" "$RUNS/$name" && rm -f "$RUNS/$name/train_metrics.json"
  $PY -m flowvae train --out "$RUNS/$name" --resume "loss.kl_beta=$beta" train.max_steps=11172 train.max_minutes=0 \
    train.threads=1 train.checkpoint_every=500 > "$RUNS/$name.log" 2>&1 &
done
wait
