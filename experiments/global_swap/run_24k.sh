#!/usr/bin/env bash
# The late KL-weight phase on the 24,000-step model that ships as pretrained:fashion_mnist, and its control
# (experiments/global_swap/README.md, "On the 24,000-step model"). The shipped file holds no optimiser state,
# so both start from its weights with a fresh AdamW (from_weights.py). Raising train.max_steps to 28,000 on
# --resume re-plans the cosine over 28,000 steps from step 24,000: both continue at lr 1.0e-4 decaying to 0;
# the reported bound always uses KL weight 1. One thread each, side by side (THREADS=2 for a run alone).
#   bash experiments/global_swap/run_24k.sh RUNS_DIR                          # fm24k_b01 and fm24k_more
#   THREADS=2 bash experiments/global_swap/run_24k.sh RUNS_DIR fm24k_b003:0.03  # NAME:KL_WEIGHT ...
#   MODEL=model.prior=flow bash experiments/global_swap/run_24k.sh RUNS_DIR fm24k_fp:1 fm24k_fp_b01:0.1
# MODEL holds config changes for from_weights.py (a flow prior on z starts as the shipped N(0, I)).
# CKPT and STEPS run the same phase on another shipped model (README, "The late phase on the per-level model"):
#   CKPT=pretrained:fashion_mnist_levels STEPS=13172 bash experiments/global_swap/run_24k.sh RUNS_DIR lv_b01:0.1 lv_more:1
# LOSS holds more training-loss changes for the phase (a KL weight per level code):
#   LOSS='loss.level_kl_beta=[1,0.1]' CKPT=pretrained:fashion_mnist_levels STEPS=13172 bash experiments/global_swap/run_24k.sh RUNS_DIR lv_b01c:0.1
set -euo pipefail
RUNS=${1:?directory for the runs}
shift
SPECS=("$@")
[ ${#SPECS[@]} -gt 0 ] || SPECS=(fm24k_b01:0.1 fm24k_more:1)
THREADS=${THREADS:-1}
export OMP_NUM_THREADS=$THREADS
PY=${PYTHON:-python}
CKPT=${CKPT:-pretrained:fashion_mnist}
STEPS=${STEPS:-28000}
for run in "${SPECS[@]}"; do
  name=${run%%:*}; beta=${run##*:}
  rm -rf "${RUNS:?}/$name"
  $PY experiments/global_swap/from_weights.py --checkpoint "$CKPT" --out "$RUNS/$name" ${MODEL:-}
  $PY -m flowvae train --out "$RUNS/$name" --resume "loss.kl_beta=$beta" ${LOSS:-} train.max_steps="$STEPS" train.max_minutes=0 \
    train.threads="$THREADS" train.checkpoint_every=500 --no-progress > "$RUNS/$name.log" 2>&1 &
done
wait
