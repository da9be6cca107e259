#!/usr/bin/env bash
# Steps per second of configs/fashion_mnist.yaml with one and two CPU threads, interleaved (2 rounds of 90 s
# each; on a shared machine quote the medians), for planning train.max_steps of the 3-hour two-core run.
#   bash experiments/bits_budget/thread_speed.sh /tmp/speed | tee experiments/bits_budget/results/thread_speed.txt
set -euo pipefail
DIR=${1:?scratch directory}
PY=${PYTHON:-python}
for i in 1 2; do
  for t in 2 1; do
    rm -rf "$DIR/time_${t}_$i"
    OMP_NUM_THREADS=$t $PY -m flowvae train --config configs/fashion_mnist.yaml --out "$DIR/time_${t}_$i" \
      train.threads=$t train.max_minutes=1.5 train.eval_every=0 train.checkpoint_every=100000 --no-progress 2>&1 \
      | grep "^done" | sed "s/^/threads=$t run=$i: /"
  done
done
