"""The shipped 24,000-step model, the 30,000-step run, a second fp32 run of the 24,000 steps (two threads) and the
24,000 steps in bf16 side by side, every column under one judge file (CNN test accuracy 0.8697), from the result
files of the commands in README.md ("Should the 30,000 steps ship?" and "bf16 training at equal steps").

    python experiments/bits_budget/candidates.py
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
RUNS = {  # name: (one draw's ELBO, importance-weighted, analysis, Frechet sweep, Frechet at the sweep's best T
    #        by seed, spread3)
    "fm24k_sig (pretrained:fashion_mnist)": ("eval_fm24k_sig", "eval_k32_fm24k_sig", "analysis_fm24k_sig_judge8697",
                                             "fid_fm24k_sig_judge8697", "fid_fm24k_sig_judge8697_t09_s{}",
                                             "spread3_fm24k_sig"),
    "fm30k_2t (configs/fashion_mnist_30k.yaml)": ("eval_fm30k_2t", "timed_eval_k32_fm30k_2t", "analysis_fm30k_2t",
                                                  "fid_fm30k_2t", "fid_fm30k_2t_t09_s{}", "spread3_fm30k_2t"),
    "fm24k_2t (configs/fashion_mnist_24k.yaml, two threads)": ("timed_eval_k32_fm24k_2t", "timed_eval_k32_fm24k_2t",
                                                              "analysis_fm24k_2t", "fid_fm24k_2t", "fid_fm24k_2t_t10_s{}",
                                                              "spread3_fm24k_2t"),
    "fm24k_bf16 (configs/fashion_mnist_24k.yaml, train.precision=bf16)": (
        "eval_fm24k_bf16", "eval_k32_fm24k_bf16", "analysis_fm24k_bf16", "fid_fm24k_bf16", "fid_fm24k_bf16_t10_s{}",
        "spread3_fm24k_bf16"),
}


def load(name: str) -> dict:
    return json.loads((R / f"{name}.json").read_text())


def main() -> None:
    print("| run | test elbo_bpd | iw32_bpd | swap → B (cnn / logreg, 1,000 pairs) | resample: class change (cnn) | "
          "Fréchet distance, T = 0.5 .. 1.0 (seed 0) | at that best T, seeds 0 / 1 / 2 (mean) | "
          "one draw's ELBO over 3 seeds: largest spread (image), 8910's |")
    print("|---|---|---|---|---|---|---|---|")
    for run, (ev, iw, an, fid, fid_seed, spread) in RUNS.items():
        e, w, a, f, s = load(ev), load(iw), load(an), load(fid), next(iter(load(spread).values()))
        sw, rs = a["swap"]["global"]["to_global_class"], a["resample"]["global"]["class_change"]["cnn"]
        sweep = ", ".join(f"{v:.2f}" for v in f["fid"].values())
        t09 = [f["best_fid"]] + [load(fid_seed.format(i))["fid"][str(float(f["best_temperature"]))] for i in (1, 2)]
        worst = max(s["largest_spreads"].items(), key=lambda kv: max(kv[1]) - min(kv[1]))
        v8910 = s["largest_spreads"].get("8910")
        s8910 = f"{max(v8910) - min(v8910):.2f}" if v8910 else "under the top five"
        print(f"| {run} | {e['elbo_bpd']:.4f} | {w['iw32_bpd']:.4f} | {sw['cnn']:.3f} / {sw['logreg']:.3f} | {rs:.3f} | "
              f"{sweep} (best T = {f['best_temperature']}) | {' / '.join(f'{v:.2f}' for v in t09)} "
              f"({statistics.mean(t09):.2f}) | {s['spread_max']:.2f} ({worst[0]}), {s8910} |")


if __name__ == "__main__":
    main()
