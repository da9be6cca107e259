"""Section 7's equal-clip table (experiments/bounded_flow/README.md): configs/fashion_mnist.yaml over a 4,000-step
cosine with train.grad_clip=10, with a normal base (short_tail0) and with linear tails beyond |eps| = 2
(short_tail2), from the files tails_pair.sh writes.

    python experiments/bounded_flow/tails_table.py
"""
from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
RUNS = {"short_tail0": "normal base", "short_tail2": "linear tails beyond 2"}


def _load(name: str) -> dict:
    p = R / name
    return json.loads(p.read_text()) if p.exists() else {}


def _only(d: dict) -> dict:
    return next(iter(d.values())) if d else {}


def main() -> None:
    print("| run | base | test bound, 10,000 images (k=1, one draw) | mean over 8 draws | periodic eval at 2,000 / 4,000 "
          "(1,000 images) | all test images, 8 draws: median / 99% / largest spread (image) | images over 0.5 | "
          "1754 over 64 draws (spread) | 480 (spread) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run, base in RUNS.items():
        e, s, d = _load(f"eval_{run}.json"), _only(_load(f"spread8_{run}.json")), _only(_load(f"draws64_{run}.json"))
        c = _load(f"curves/{run}/curve.json").get("elbo_bpd", {})
        if not (e and s and d):
            print(f"| {run} | {base} | not scored yet | | | | | | |")
            continue
        worst = max(s["largest_spreads"], key=lambda k: max(s["largest_spreads"][k]) - min(s["largest_spreads"][k]))
        i1, i2 = d["images"]["1754"], d["images"]["480"]
        print(f"| {run} | {base} | {e['elbo_bpd']:.4f} | {sum(s['mean_bpd_per_seed']) / len(s['mean_bpd_per_seed']):.4f} | "
              f"{c.get('2000', float('nan')):.4f} / {c.get('4000', float('nan')):.4f} | {s['spread_median']:.3f} / "
              f"{s['spread_p99']:.3f} / {s['spread_max']:.2f} ({worst}) | {s['images_spread_over_0.5']} | "
              f"{i1['min']:.2f}..{i1['max']:.2f} ({i1['spread']:.2f}) | {i2['min']:.2f}..{i2['max']:.2f} ({i2['spread']:.2f}) |")


if __name__ == "__main__":
    main()
