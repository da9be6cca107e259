#!/usr/bin/env bash
# Interleaved A/B of bench/benchmark.py's train ratio (flowvae Glow / normflows Glow, one thread) between another
# checkout (e.g. an older commit: git worktree add /tmp/base <commit>) and this one, with and without the shift
# bound, ROUNDS times. On a shared CPU, compare the medians of each column, not single runs.
#   bash bench/ab_ratio.sh /tmp/base 3 > bench/results/ab_ratio.txt
set -u
other=${1:?usage: bench/ab_ratio.sh OTHER_CHECKOUT [ROUNDS]}; rounds=${2:-3}
here=$(cd "$(dirname "$0")/.." && pwd); py=${PYTHON:-$here/.venv/bin/python}
for i in $(seq "$rounds"); do
  for side in other shift_clamp_0 shift_clamp_8; do
    dir=$here; extra=()
    [ "$side" = other ] && dir=$other
    [ "$side" = shift_clamp_0 ] && extra=(--override model.shift_clamp=0)
    log=$(cd "$dir" && OMP_NUM_THREADS=1 "$py" bench/benchmark.py --repeat 1 --models flowvae_glow,normflows_glow \
          --no-memory "${extra[@]}" 2>&1)
    echo "$side round $i: $(grep -E '^\| (flowvae_glow|normflows_glow) ' <<<"$log" | awk -F'|' '{printf "%s %s img/s, ", $2, $4}')$(grep 'train: flowvae_glow / normflows_glow' <<<"$log" | tail -1)"
  done
done
