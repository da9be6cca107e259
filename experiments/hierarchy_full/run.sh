#!/usr/bin/env bash
# The report's hierarchy on the full 2 x 8 x 128 flow (experiments/hierarchy_full/README.md). Two runs that differ
# in one setting, side by side, one thread each, the recipe and step count of the global hybrid that ships as
# pretrained:fashion_mnist (configs/fashion_mnist.yaml, 9,172 steps):
#   fb    level free bits 0.05 nats per z_l dim and a 2,000-step KL warm-up
#   code  the same, and each split prior reads the level code alone, not the kept half (model.split_prior=code)
# Interrupted runs continue with the same command plus --resume (the lr is a function of the step).
#   bash experiments/hierarchy_full/run.sh RUNS_DIR [--resume]
set -euo pipefail
RUNS=${1:?directory for the runs}; shift || true
export OMP_NUM_THREADS=1
PY=${PYTHON:-python}
common=(--config configs/fashion_mnist.yaml model.injection=hierarchical model.hier_prior=topdown
        loss.level_free_bits=0.05 loss.kl_warmup_steps=2000 train.max_minutes=0 train.max_steps=9172
        train.threads=1 train.checkpoint_every=500)
$PY -m flowvae train --out "$RUNS/hier_fb" "$@" "${common[@]}" > "$RUNS/hier_fb.log" 2>&1 &
$PY -m flowvae train --out "$RUNS/hier_code" "$@" "${common[@]}" model.split_prior=code > "$RUNS/hier_code.log" 2>&1 &
wait
