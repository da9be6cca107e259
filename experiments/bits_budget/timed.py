"""The table of "Timed end to end" in experiments/bits_budget/README.md: the shipped 24,000-step run (trained
across sessions, one thread then two) against the same command timed in one go on two threads, and the same
recipe planned over 30,000 steps, timed the same way.

    python experiments/bits_budget/timed.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SHIPPED = HERE.parents[1] / "flowvae" / "pretrained" / "fashion_mnist.json"

ROWS = [  # run, how it ran, train minutes (and steps) from, evaluate --k 32 from
    ("fm24k_sig (pretrained:fashion_mnist)", "one thread beside other runs to step 11,922, then two", SHIPPED,
     RESULTS / "eval_k32_fm24k_sig.json"),
    ("fm24k_2t", "two threads, one uninterrupted run on the idle machine (2026-12-05)",
     RESULTS / "timed_train_fm24k_2t.json", RESULTS / "timed_eval_k32_fm24k_2t.json"),
    ("fm30k_2t (configs/fashion_mnist_30k.yaml)", "two threads, one uninterrupted run on the idle machine (2026-12-05)",
     RESULTS / "timed_train_fm30k_2t.json", RESULTS / "timed_eval_k32_fm30k_2t.json"),
]


def main() -> None:
    print("| run | how it ran | steps | train minutes | steps/s | test elbo_bpd (10,000) | importance-weighted, 32 draws "
          "| median image (iw32) | worst image (iw32) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, how, train_file, eval_file in ROWS:
        t = json.loads(train_file.read_text())
        steps, minutes = t["step"], t["train_minutes"]
        e = json.loads(eval_file.read_text())
        print(f"| {run} | {how} | {steps:,} | {minutes:.1f} | {steps / (60 * minutes):.2f} | {e['elbo_bpd']:.4f} | "
              f"{e['iw32_bpd']:.4f} | {e['iw32_bpd_median']:.4f} | {e['iw32_bpd_max']:.2f} ({e['iw32_bpd_max_index']}) |")


if __name__ == "__main__":
    main()
