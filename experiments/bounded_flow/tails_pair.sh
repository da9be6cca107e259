#!/usr/bin/env bash
# Section 7 (README.md): the cost of the base with linear tails beyond |eps| = 2 at equal clip. Two runs of
# configs/fashion_mnist.yaml with its earlier tanh coupling scale that differ only in model.base_tail (0 = normal, 2), both with train.grad_clip=10 (the
# tails diverged at clip 50) and a STEPS-step cosine (default 4,000), one thread each, side by side; then each scored
# like the rows of section 6 (all test images at k=1, the spread over 8 draws, images 1754 and 480 over 64 draws)
# and section 8 (each hard image alone over 256 draws).
# Runs are named short_tail0/2 at 4,000 steps and s<STEPS>_tail0/2 otherwise.
#   bash experiments/bounded_flow/tails_pair.sh RUNS_DIR [--resume]            # 4,000 steps
#   STEPS=9172 bash experiments/bounded_flow/tails_pair.sh RUNS_DIR [--resume] # the shipped model's step count
#   python experiments/bounded_flow/tails_table.py
set -euo pipefail
RUNS=${1:?directory for the runs}; shift || true
OUT=experiments/bounded_flow/results
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=${PYTHON:-python}
STEPS=${STEPS:-4000}
if [ "$STEPS" = 4000 ]; then PRE=short; else PRE=s$STEPS; fi
common=(--config configs/fashion_mnist.yaml model.coupling_scale=tanh train.max_minutes=0 train.max_steps=$STEPS train.grad_clip=10 train.threads=1
        train.checkpoint_every=500)
pids=()
for tail in 0 2; do
  $PY -m flowvae train --no-progress --out "$RUNS/${PRE}_tail$tail" "$@" "${common[@]}" model.base_tail=$tail \
      > "$RUNS/${PRE}_tail$tail.log" 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
for tail in 0 2; do
  r=${PRE}_tail$tail
  $PY -m flowvae evaluate --checkpoint "$RUNS/$r" --k 1 --no-progress --out $OUT/eval_$r.json
  $PY experiments/bounded_flow/probe.py --models "$RUNS/$r" --all 0 --seeds 0 1 2 3 4 5 6 7 --json $OUT/spread8_$r.json
  $PY experiments/bounded_flow/probe.py --models "$RUNS/$r" --images 1754 480 --seeds $(seq 0 63) --json $OUT/draws64_$r.json
  $PY experiments/bounded_flow/probe.py --models "$RUNS/$r" --images 6573 4203 8033 1754 480 --alone --seeds $(seq 0 255) \
      --json $OUT/alone256_$r.json
  $PY experiments/hierarchy_full/curve.py "$RUNS/$r" --out $OUT/curves
done
$PY experiments/bounded_flow/tails_table.py
