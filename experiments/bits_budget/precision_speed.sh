#!/usr/bin/env bash
# Training speed of bf16 against fp32 on two threads: the 24,000-step config for 400 steps each, fp32 and bf16
# interleaved over two rounds (no evaluation or checkpoint in between), then the median ratio of the minutes.
#   bash experiments/bits_budget/precision_speed.sh [WORK_DIR] > experiments/bits_budget/results/precision_speed_2t.txt
set -euo pipefail
W=${1:-runs/precision_speed}
PY=${PYTHON:-python}
for r in 1 2; do
  for p in fp32 bf16; do
    $PY -m flowvae train --config configs/fashion_mnist_24k.yaml --out "$W/${p}_$r" --no-progress train.max_steps=400 \
        train.eval_every=0 train.checkpoint_every=0 train.threads=2 train.precision=$p > /dev/null
  done
done
$PY - "$W" <<'PY'
import json, statistics, sys
from pathlib import Path
w = Path(sys.argv[1])
minutes = {p: [json.loads((w / f"{p}_{r}" / "train_metrics.json").read_text())["train_minutes"] for r in (1, 2)]
           for p in ("fp32", "bf16")}
for p, m in minutes.items():
    print(f"{p}: {' / '.join(f'{v:.2f}' for v in m)} training minutes for 400 steps, "
          f"{400 / (60 * statistics.median(m)):.2f} steps/s (median)")
print(f"bf16 speed-up on two threads: {statistics.median(minutes['fp32']) / statistics.median(minutes['bf16']):.2f}x")
PY
