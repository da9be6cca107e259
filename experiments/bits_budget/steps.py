"""The bound against the planned step count: each run is one cosine of configs/fashion_mnist.yaml planned over
its own steps, scored at its end on all 10,000 test images; the periodic evaluations (first 1,000 test images)
show each cosine on the way. Prints the table of experiments/bits_budget/README.md ("A longer cosine") and
writes results/steps.png.

    python experiments/hierarchy_full/curve.py runs/fm_18k --out experiments/bits_budget/results/curves
    python experiments/bits_budget/steps.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXP = HERE.parent
# name -> (planned steps, end-of-run evaluation on all 10,000 test images, periodic curve or None, what it is)
RUNS = {
    "p_control": (2000, RESULTS / "eval_p_control.json", None, "the pilot control of this study"),
    "global": (9172, EXP / "bounded_flow" / "results" / "eval_shiftclamp8.json",
               EXP / "hierarchy_full" / "results" / "global" / "curve.json", "pretrained:fashion_mnist"),
    "fm_18k": (18000, RESULTS / "eval_fm_18k.json", RESULTS / "curves" / "fm_18k" / "curve.json", "the longer cosine"),
}
THREE_HOURS_STEPS = 26_900  # results/thread_speed.txt: 2.49 steps/s on two threads, times 3 hours


def _load(path):
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else None


def main() -> None:
    ends = []
    print("| run | what | planned steps | test elbo_bpd (10,000) | median | worst image | mean of the other 9,999 |")
    print("|---|---|---|---|---|---|---|")
    for name, (steps, ev, _, what) in RUNS.items():
        e = _load(ev)
        if e is None:
            continue
        ends.append((steps, e["elbo_bpd"]))
        print(f"| {name} | {what} | {steps:,} | {e['elbo_bpd']:.4f} | {e['elbo_bpd_median']:.4f} | "
              f"{e['elbo_bpd_max']:.2f} ({e['elbo_bpd_max_index']}) | "
              f"{(e['elbo_bpd'] * e['images'] - e['elbo_bpd_max']) / (e['images'] - 1):.4f} |")
    ends.sort()
    if len(ends) >= 2:
        print()
        for (n0, b0), (n1, b1) in zip(ends, ends[1:]):
            per_doubling = (b0 - b1) / math.log2(n1 / n0)
            print(f"{n0:,} -> {n1:,} steps: {b1 - b0:+.4f} bits/dim, {-per_doubling:+.4f} per doubling of the steps")
        (n0, b0), (n1, b1) = ends[-2], ends[-1]
        per_doubling = (b0 - b1) / math.log2(n1 / n0)
        if per_doubling <= 0:
            print("the last step up did not lower the mean bound: no extrapolation")
            _plot()
            return
        guess = b1 - per_doubling * math.log2(THREE_HOURS_STEPS / n1)
        print(f"an extrapolation, not a measurement: if the last gain per doubling held, {THREE_HOURS_STEPS:,} steps "
              f"(three hours on two threads) would give about {guess:.3f}")
    _plot()


def _plot() -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[plots]): no plot")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for name, (steps, ev, curve, what) in RUNS.items():
        c, e = _load(curve), _load(ev)
        if e is None:
            continue
        if c is None:  # an end point only
            ax.plot([steps], [e["elbo_bpd"]], marker="*", markersize=12, linestyle="none",
                    label=f"{name}: {what}, {steps:,} steps")
            continue
        pts = sorted((int(s), v) for s, v in c["elbo_bpd"].items())
        line, = ax.plot([s for s, _ in pts], [v for _, v in pts], marker=".", label=f"{name}: {what}, {steps:,} steps (1,000 test images)")
        ax.plot([pts[-1][0]], [e["elbo_bpd"]], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    ax.axhline(3.10, color="grey", linestyle="--", linewidth=0.8, label="goal 3.10")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("test elbo_bpd (a bound, bits/dim)")
    ax.set_ylim(3.0, 3.8)
    ax.set_title("One cosine each; stars: all 10,000 test images at the end")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out = RESULTS / "steps.png"
    fig.savefig(out, dpi=110)
    print(f"written to {out}")


if __name__ == "__main__":
    main()
