#!/usr/bin/env bash
# Section 6 (README.md): the coupling-scale comparison and the base with linear tails after the fact.
#   bash experiments/bounded_flow/score_scale.sh runs/scale_sigmoid runs/classifier.pt [runs/tail2]
# The shipped model's bound on all test images and its analysis are section 4's (eval_shiftclamp8.json,
# analysis_shiftclamp8.json). Images 1754 and 480 are the two whose bound moved most with the draw.
set -euo pipefail
RUN=${1:?the run of configs/fashion_mnist.yaml with model.coupling_scale=sigmoid}; CLF=${2:?classifier cache}
TAIL=${3:-}  # optional: run tail2 of section 7 (configs/fashion_mnist.yaml with model.base_tail=2)
OUT=experiments/bounded_flow/results
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=${PYTHON:-python}
$PY -m flowvae evaluate --checkpoint "$RUN" --k 1 --no-progress --out $OUT/eval_scale_sigmoid.json
$PY -m flowvae analyze --checkpoint "$RUN" --classifier "$CLF" --no-progress --out $OUT/analysis_scale_sigmoid.json
$PY experiments/bounded_flow/probe.py --models pretrained:fashion_mnist --all 0 --seeds 0 1 2 3 4 5 6 7 \
    --json $OUT/spread8_shiftclamp8.json
$PY experiments/bounded_flow/probe.py --models "$RUN" --all 0 --seeds 0 1 2 3 4 5 6 7 --json $OUT/spread8_scale_sigmoid.json
$PY experiments/bounded_flow/probe.py --models pretrained:fashion_mnist "$RUN" --all 0 --seeds 0 1 2 3 4 5 6 7 \
    --base-tail 2 --json $OUT/spread8_tail2_posthoc.json
$PY experiments/bounded_flow/probe.py --models pretrained:fashion_mnist "$RUN" --images 1754 480 --seeds $(seq 0 63) \
    --json $OUT/draws64_normal.json
$PY experiments/bounded_flow/probe.py --models pretrained:fashion_mnist "$RUN" --images 1754 480 --seeds $(seq 0 63) \
    --base-tail 2 --json $OUT/draws64_tail2_posthoc.json
[ -z "$TAIL" ] || bash experiments/bounded_flow/score_tail.sh "$TAIL" tail2 "$CLF"  # section 7
$PY experiments/bounded_flow/scale_table.py
