"""Section 7's equal-clip table (experiments/bounded_flow/README.md): configs/fashion_mnist.yaml with
train.grad_clip=10, with a normal base (tail0) and with linear tails beyond |eps| = 2 (tail2), over a 4,000-step
cosine (short_*) and over the shipped model's 9,172 steps (s9172_*), from the files tails_pair.sh writes; and
s9172_tail2 with model.coupling_scale=sigmoid (s9172_tail2_sig, section 9).

    python experiments/bounded_flow/tails_table.py
"""
from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
RUNS = {"short_tail0": "normal base", "short_tail2": "linear tails beyond 2",
        "s9172_tail0": "normal base", "s9172_tail2": "linear tails beyond 2",
        "s9172_tail2_sig": "linear tails beyond 2, sigmoid coupling scale"}


def _load(name: str) -> dict:
    p = R / name
    return json.loads(p.read_text()) if p.exists() else {}


def _only(d: dict) -> dict:
    return next(iter(d.values())) if d else {}


def _alone(run: str) -> str:
    """The largest move of one image's bound from its median over 256 draws, each image alone in its batch."""
    a = _only(_load(f"alone256_{run}.json")).get("images", {})
    if not a:
        return "-"
    worst = max(a, key=lambda i: a[i]["largest_move"])
    return f"{a[worst]['largest_move']:.2f} ({worst}); 1754: {a['1754']['largest_move']:.2f}"


def main() -> None:
    print("| run | steps | base | test bound, 10,000 images (k=1, one draw) | mean over 8 draws | periodic eval at "
          "2,000 / last (1,000 images) | all test images, 8 draws: median / 99% / largest spread (image) | images over "
          "0.5 | 1754 over 64 draws (spread) | 480 (spread) | hard images alone, 256 draws: largest move from the "
          "median (image) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for run, base in RUNS.items():
        e, s, d = _load(f"eval_{run}.json"), _only(_load(f"spread8_{run}.json")), _only(_load(f"draws64_{run}.json"))
        c = _load(f"curves/{run}/curve.json")
        steps = c.get("step", "")
        if not (e and s and d):
            print(f"| {run} | {steps} | {base} | not scored yet | | | | | | | |")
            continue
        bpd = c.get("elbo_bpd", {})
        last = bpd[max(bpd, key=int)] if bpd else float("nan")
        worst = max(s["largest_spreads"], key=lambda k: max(s["largest_spreads"][k]) - min(s["largest_spreads"][k]))
        i1, i2 = d["images"]["1754"], d["images"]["480"]
        print(f"| {run} | {steps:,} | {base} | {e['elbo_bpd']:.4f} | "
              f"{sum(s['mean_bpd_per_seed']) / len(s['mean_bpd_per_seed']):.4f} | "
              f"{bpd.get('2000', float('nan')):.4f} / {last:.4f} | {s['spread_median']:.3f} / "
              f"{s['spread_p99']:.3f} / {s['spread_max']:.2f} ({worst}) | {s['images_spread_over_0.5']} | "
              f"{i1['min']:.2f}..{i1['max']:.2f} ({i1['spread']:.2f}) | {i2['min']:.2f}..{i2['max']:.2f} "
              f"({i2['spread']:.2f}) | {_alone(run)} |")


if __name__ == "__main__":
    main()
