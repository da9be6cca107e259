#!/usr/bin/env bash
# Time the first MINUTES (default 10) of configs/fashion_mnist_24k.yaml on two threads with nothing else running,
# and project its 24,000 steps from the rate: is "three hours on this 2-core CPU" a fair plan?
#   bash experiments/bits_budget/time_plan.sh /tmp/plan 10 | tee experiments/bits_budget/results/time_plan.txt
set -euo pipefail
DIR=${1:?scratch directory}
MIN=${2:-10}
PY=${PYTHON:-python}
rm -rf "$DIR/plan"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg); $(nproc) CPUs"
OMP_NUM_THREADS=2 $PY -m flowvae train --config configs/fashion_mnist_24k.yaml --out "$DIR/plan" \
  train.threads=2 train.max_minutes="$MIN" --no-progress 2>&1 | grep "^done"
$PY - "$DIR/plan" <<'PY'
import sys
from flowvae.checkpoint import read_checkpoint
s = read_checkpoint(sys.argv[1])
steps, secs, plan = s["step"], s["train_seconds"], s["config"]["train"]["max_steps"]
print(f"{steps} steps in {secs / 60:.1f} min of training: {steps / secs:.2f} steps/s; "
      f"{plan:,} steps at this rate: {plan / steps * secs / 60:.0f} min")
PY
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
