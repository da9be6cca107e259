"""The Fréchet-distance table of experiments/sample_quality/README.md from the `flowvae fid` result files.

    python experiments/sample_quality/table.py
"""
from __future__ import annotations

import json
from pathlib import Path

R = Path(__file__).resolve().parent / "results"
TEMPS = ["0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "1.0"]

# (model, N, result files whose temperatures are merged). Three judge files: test accuracy 0.8697 (the rows
# without a mark), 0.8695 and 0.8701 (the rows marked so); distances compare only under one judge.
ROWS = [
    ("pretrained:fashion_mnist (24,000 steps; 3.1149), judge 0.8701", 10000, ["fid_fashion_mnist_24k_judge8701_n10000.json"]),
    ("pretrained:fashion_mnist_hierarchical (per-level codes on the full flow, ladder posterior, seed 2, 9,172 steps; "
     "3.2688), judge 0.8701", 10000, ["fid_hierarchical_ladder_judge8701_n10000.json"]),
    ("flow-only Glow, today's recipe, seed 1 (train.seed=1, 9,172 steps; 3.3236), judge 0.8701", 10000,
     ["fid_glow_sig_s1_judge8701_n10000.json"]),
    ("pretrained:fashion_mnist (configs/fashion_mnist_24k.yaml, 24,000 steps; 3.1149), judge 0.8695", 10000,
     ["fid_fashion_mnist_24k_n10000.json"]),
    ("its recipe at 9,172 steps (sigmoid coupling scale, tails beyond 2, clip 10; 3.2484), judge 0.8695", 10000,
     ["fid_fashion_mnist_sig_n10000.json"]),
    ("the weights shipped before it (tanh coupling scale, normal base, clip 50; 3.2035), judge 0.8695", 10000,
     ["fid_shiftclamp8_judge25_n10000.json"]),
    ("pretrained:fashion_mnist_levels (per-level codes, tanh scale; 3.2420), judge 0.8695", 10000,
     ["fid_levels_n10000.json"]),
    ("flow-only Glow, today's recipe (configs/fashion_mnist.yaml, model.type=glow, 9,172 steps; 3.3120), judge 0.8695", 10000,
     ["fid_glow_sig_n10000.json"]),
    ("flow-only Glow, configs/fashion_mnist.yaml's earlier recipe, model.type=glow, 9,172 steps (3.2798 bits/dim)", 10000,
     ["fid_glow_n10000_low.json", "fid_glow_n10000.json"]),
    ("the weights shipped before (global hybrid, same flow, recipe and steps; 3.2035)", 10000,
     ["fid_fashion_mnist_n10000_low.json", "fid_fashion_mnist_n10000.json"]),
    ("pretrained:fashion_mnist_hierarchical_small (2 x 2 x 32 flow, base_tail 0.5; 4.2395)", 10000,
     ["fid_hier_t05_n10000_low.json", "fid_hier_t05_n10000.json"]),
    ("its retrain before (base_tail 1; 4.2489)", 10000, ["fid_hierarchical_n10000.json"]),
    ("flow-only Glow", 2000, ["fid_glow_n2000.json"]),
    ("the weights shipped before", 2000, ["fid_shiftclamp8_n2000.json"]),
    ("the hierarchical retrain with base_tail 1", 2000, ["fid_hier_t1_n2000_low.json", "fid_hier_t1_n2000.json"]),
    ("retired: fashion_mnist_v2 (unbounded shifts; 3.2474)", 2000, ["fid_v2_n2000.json"]),
    ("retired: the first hierarchical weights (4.4286)", 2000, ["fid_hier_n2000_low.json", "fid_hier_n2000.json"]),
]


def _key(t: str) -> str:
    return f"{float(t):.1f}"


def main() -> None:
    print("| model | N | " + " | ".join(f"T={t}" for t in TEMPS) + " | best |")
    print("|---|---|" + "---|" * len(TEMPS) + "---|")
    for model, n, files in ROWS:
        fid: dict[str, float] = {}
        for f in files:
            p = R / f
            if p.exists():
                d = json.loads(p.read_text())
                assert d["n"] == n, f"{f} has N = {d['n']}, not {n}"
                fid.update({_key(t): v for t, v in d["fid"].items()})
        if not fid:
            continue
        best = min(fid, key=fid.get)
        cells = [("**%.2f**" if t == best else "%.2f") % fid[t] if t in fid else "" for t in TEMPS]
        print(f"| {model} | {n:,} | " + " | ".join(cells) + f" | T={best} |")


if __name__ == "__main__":
    main()
