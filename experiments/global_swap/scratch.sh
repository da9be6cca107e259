#!/usr/bin/env bash
# A KL weight below 1 from step 0 (experiments/global_swap/README.md, "From scratch"): the recommended config
# with one change, loss.kl_beta, for the same 9,172 steps, seed and cosine as pretrained:fashion_mnist; the
# reported bound always uses weight 1. The 0.1 run diverged at step 2,690 (its KL jumped from 166 to 90,915
# nats); it was continued from its step-2,500 checkpoint with a tighter gradient clip, the second command.
#   bash experiments/global_swap/scratch.sh RUNS_DIR
set -euo pipefail
RUNS=${1:?directory for the runs}
export OMP_NUM_THREADS=1
PY=${PYTHON:-python}
for beta in 0.3 0.1; do
  name=b${beta/./}_scratch
  $PY -m flowvae train --config configs/fashion_mnist.yaml --out "$RUNS/$name" "loss.kl_beta=$beta" \
    train.max_steps=9172 train.max_minutes=0 train.threads=1 train.checkpoint_every=500 > "$RUNS/$name.log" 2>&1 &
done
wait || true
# the 0.1 run stops itself after 100 non-finite steps in a row, keeping the checkpoint from before them
if ! grep -q "^done" "$RUNS/b01_scratch.log"; then
  $PY -m flowvae train --out "$RUNS/b01_scratch" --resume train.grad_clip=10 > "$RUNS/b01_scratch_resumed.log" 2>&1
fi
