#!/usr/bin/env bash
# Score a shift-bound run once it has finished (README.md, sections 4 and 5): the bound on all 10,000 test
# images, the per-image spread over draws, and the swap analysis with the cached judge; NAME names the results.
#   bash experiments/bounded_flow/finish_run.sh runs/shiftclamp8 runs/classifier.pt shiftclamp8
#   bash experiments/bounded_flow/finish_run.sh runs/hier_sc8 runs/classifier.pt hier_sc8
set -euo pipefail
RUN=${1:?run directory}; CLF=${2:?classifier cache}; NAME=${3:-shiftclamp8}
OUT=experiments/bounded_flow/results
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=${PYTHON:-python}
$PY -m flowvae evaluate --checkpoint "$RUN" --k 1 --no-progress --out $OUT/eval_$NAME.json
$PY experiments/bounded_flow/probe.py --models "$RUN" --images 6573 4203 8033 0 1 --json $OUT/draws_$NAME.json
$PY -m flowvae analyze --checkpoint "$RUN" --classifier "$CLF" --no-progress --out $OUT/analysis_$NAME.json
$PY experiments/bounded_flow/probe.py --models "$RUN" --all 0 --json $OUT/spread_$NAME.json
