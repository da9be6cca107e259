#!/usr/bin/env bash
# The late phase of hier_c1 (experiments/hierarchy_full/README.md, "Free nats withdrawn late"): continue the
# finished 9,172-step run RUNS/hier_c1 by 2,000 steps (raising train.max_steps on --resume re-plans the cosine
# from there), once without the free nats per level-code dim and once unchanged (the control), side by side on
# one thread each; then score both on all 10,000 test images.
# With a judge's cache as the second argument, also the analysis (active units, swap, resample) of both.
#   bash experiments/hierarchy_full/late.sh RUNS_DIR [CLASSIFIER_CACHE]
set -euo pipefail
RUNS=${1:?directory holding hier_c1}; CLF=${2:-}
OUT=experiments/hierarchy_full/results
export OMP_NUM_THREADS=1
PY=${PYTHON:-python}
pids=()
both() { for p in "${pids[@]}"; do wait "$p"; done; pids=(); }  # fails if either job failed
for r in hier_c1_nofb hier_c1_more; do
  [ -d "$RUNS/$r" ] || cp -r "$RUNS/hier_c1" "$RUNS/$r"
done
common=(--resume train.max_steps=11172 train.max_minutes=0 train.threads=1 --no-progress)
$PY -m flowvae train --out "$RUNS/hier_c1_nofb" "${common[@]}" loss.level_free_bits=0 & pids+=($!)
$PY -m flowvae train --out "$RUNS/hier_c1_more" "${common[@]}" & pids+=($!)
both
for r in hier_c1_nofb hier_c1_more; do
  mkdir -p "$OUT/$r"
  $PY -m flowvae evaluate --checkpoint "$RUNS/$r" --k 1 --no-progress --out "$OUT/$r/eval.json" & pids+=($!)
done
both
if [ -n "$CLF" ]; then
  for r in hier_c1_nofb hier_c1_more; do
    $PY -m flowvae analyze --checkpoint "$RUNS/$r" --classifier "$CLF" --no-progress --out "$OUT/$r/analysis.json" & pids+=($!)
  done
  both
fi
