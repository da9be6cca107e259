#!/usr/bin/env bash
# Section 7 (README.md): a run of configs/fashion_mnist.yaml trained with model.base_tail=2, scored as the rows of
# section 6's table (its files: eval_NAME, analysis_NAME, spread8_NAME, draws64_NAME, curves/NAME), then the table.
#   bash experiments/bounded_flow/score_tail.sh runs/tail2_clean tail2_clean runs/classifier.pt
set -euo pipefail
RUN=${1:?the run}; NAME=${2:?its name in the table: tail2 or tail2_clean}; CLF=${3:?classifier cache}
OUT=experiments/bounded_flow/results
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=${PYTHON:-python}
$PY -m flowvae evaluate --checkpoint "$RUN" --k 1 --no-progress --out $OUT/eval_$NAME.json
$PY -m flowvae analyze --checkpoint "$RUN" --classifier "$CLF" --no-progress --out $OUT/analysis_$NAME.json
$PY experiments/bounded_flow/probe.py --models "$RUN" --all 0 --seeds 0 1 2 3 4 5 6 7 --json $OUT/spread8_$NAME.json
$PY experiments/bounded_flow/probe.py --models "$RUN" --images 1754 480 --seeds $(seq 0 63) --json $OUT/draws64_$NAME.json
$PY experiments/hierarchy_full/curve.py "$RUN" --name "$NAME" --out $OUT/curves
$PY experiments/bounded_flow/scale_table.py
