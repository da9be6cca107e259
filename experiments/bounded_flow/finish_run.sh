#!/usr/bin/env bash
# Score the shift-bound run once it has finished (README.md, section 4): the bound on all 10,000 test images,
# the per-image spread over draws, and the swap analysis with the cached judge.
#   bash experiments/bounded_flow/finish_run.sh runs/shiftclamp8 runs/classifier.pt
set -euo pipefail
RUN=${1:?run directory}; CLF=${2:?classifier cache}
OUT=experiments/bounded_flow/results
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=${PYTHON:-python}
$PY -m flowvae evaluate --checkpoint "$RUN" --k 1 --out $OUT/eval_shiftclamp8.json
$PY experiments/bounded_flow/probe.py --models "$RUN" --images 6573 4203 8033 0 1 --json $OUT/draws_shiftclamp8.json
$PY -m flowvae analyze --checkpoint "$RUN" --classifier "$CLF" --no-progress --out $OUT/analysis_shiftclamp8.json
$PY experiments/bounded_flow/probe.py --models "$RUN" --all 0 --json $OUT/spread_shiftclamp8.json
