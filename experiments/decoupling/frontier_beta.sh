#!/usr/bin/env bash
# The README's frontier table, second part: the two weakest-decoder hybrids of experiments/decoupling/frontier (72 min
# each) continued for 25 more minutes of training-step time with the training loss's KL weight lowered
# to 0.3 (loss.kl_beta may change on --resume; the reported bound always uses 1), and `small` continued
# with KL weight 1 as the control for the extra training; all three at once, one thread each, then
# evaluated and analyzed with the frontier's judge.
#   bash experiments/decoupling/frontier_beta.sh            (after experiments/ablation/ablation.py ... --out experiments/decoupling/frontier)
set -euo pipefail
out=experiments/decoupling/frontier
declare -A src=([small_more]=small [small_b03]=small [small_k11_b03]=small_k11)
declare -A beta=([small_more]=1 [small_b03]=0.3 [small_k11_b03]=0.3)
pids=()
for m in small_more small_b03 small_k11_b03; do
  rm -rf "$out/$m" && cp -r "$out/${src[$m]}" "$out/$m"
  rm -f "$out/$m"/train_metrics.json "$out/$m"/analysis.json "$out/$m"/eval_full.json
  flowvae train --out "$out/$m" --resume --no-progress train.max_minutes=97 train.threads=1 "loss.kl_beta=${beta[$m]}" \
    > "$out/train_$m.log" 2>&1 & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
python experiments/ablation/ablation.py --skip-train --iw-limit 0 --models small_more,small_b03,small_k11_b03 --out "$out"
python experiments/ablation/ablation.py --table-only --models glow,global,mid,small,small_k11,hier_small,small_more,small_b03,small_k11_b03 \
  --out "$out"
