#!/usr/bin/env bash
# Score a finished (or interim) run of run.sh: the bound on all 10,000 test images, the analysis with the
# cached judge (active units, swap and resample per group), the per-level mechanism probe, and the
# per-level resample grids.
#   bash experiments/hierarchy_full/score.sh RUN_DIR CLASSIFIER_CACHE
set -euo pipefail
RUN=${1:?run directory}; CLF=${2:?classifier cache (trained on first use)}
OUT=experiments/hierarchy_full/results/$(basename "$RUN")
mkdir -p "$OUT"
export OMP_NUM_THREADS=1 PYTHONPATH=.
PY=${PYTHON:-python}
$PY -m flowvae evaluate --checkpoint "$RUN" --k 1 --out "$OUT/eval.json"
$PY -m flowvae analyze --checkpoint "$RUN" --classifier "$CLF" --no-progress --out "$OUT/analysis.json"
$PY experiments/hierarchy_full/mechanism.py --models "$RUN" --images 1000 --json "$OUT/mechanism.json"
$PY -m flowvae resample-level --checkpoint "$RUN" --level all --n 6 --m 7 --out "$OUT"
