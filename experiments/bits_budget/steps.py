"""The bound against the planned step count: each run is one cosine of configs/fashion_mnist.yaml planned over
its own steps, scored at its end on all 10,000 test images; the periodic evaluations (first 1,000 test images)
show each cosine on the way. Runs are grouped by recipe (the recipe before 2026-12-03, and today's with its
bounds: sigmoid coupling scale, linear tails beyond 2, clip 10), and the gain per doubling of the steps is
computed within a recipe only. Prints the tables of experiments/bits_budget/README.md ("A longer cosine", "The
24,000-step run of today's recipe", "30,000 steps") and writes results/steps.png and its copy for the docs site,
docs/img/bits_steps.png.

    python experiments/hierarchy_full/curve.py runs/fm_18k --out experiments/bits_budget/results/curves
    python experiments/hierarchy_full/curve.py runs/fm24k_sig --out experiments/bits_budget/results/curves
    python experiments/hierarchy_full/curve.py runs/fm30k_2t --out experiments/bits_budget/results/curves
    python experiments/bits_budget/steps.py
"""
from __future__ import annotations

import json
import math
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
EXP = HERE.parent
DOCS_FIGURE = EXP.parent / "docs" / "img" / "bits_steps.png"  # the same figure on docs/research.md
BOUNDED = EXP / "bounded_flow" / "results"
OLD, TODAY = "the recipe before 2026-12-03", "today's recipe"
# name -> (recipe, planned steps, end-of-run evaluation on all 10,000 test images, periodic curve or None, what)
RUNS = {
    "p_control": (OLD, 2000, RESULTS / "eval_p_control.json", None, "the pilot control of this study"),
    "global": (OLD, 9172, BOUNDED / "eval_shiftclamp8.json",
               EXP / "hierarchy_full" / "results" / "global" / "curve.json", "pretrained:fashion_mnist until 2026-12-03"),
    "fm_18k": (OLD, 18000, RESULTS / "eval_fm_18k.json", RESULTS / "curves" / "fm_18k" / "curve.json",
               "the longer cosine"),
    "s9172_tail2_sig": (TODAY, 9172, BOUNDED / "eval_s9172_tail2_sig.json",
                        BOUNDED / "curves" / "s9172_tail2_sig" / "curve.json", "shipped before the 24,000-step run"),
    "fm24k_sig": (TODAY, 24000, RESULTS / "eval_fm24k_sig.json", RESULTS / "curves" / "fm24k_sig" / "curve.json",
                  "pretrained:fashion_mnist (configs/fashion_mnist_24k.yaml)"),
    "fm30k_2t": (TODAY, 30000, RESULTS / "eval_fm30k_2t.json", RESULTS / "curves" / "fm30k_2t" / "curve.json",
                 "configs/fashion_mnist_30k.yaml, two idle threads"),
}
THREE_HOURS_STEPS = 19_100  # results/time_plan.txt: 1.77 steps/s on two idle threads, times 3 hours
FAST_DAY_STEPS = 26_900  # results/thread_speed.txt: 2.49 steps/s, measured on a faster day


def _load(path):
    return json.loads(Path(path).read_text()) if path and Path(path).exists() else None


def _gains(ends: list[tuple[int, float]]) -> None:
    ends.sort()
    for (n0, b0), (n1, b1) in zip(ends, ends[1:]):
        print(f"{n0:,} -> {n1:,} steps: {b1 - b0:+.4f} bits/dim, {(b1 - b0) / math.log2(n1 / n0):+.4f} per doubling")
    (n0, b0), (n1, b1) = ends[-2], ends[-1]
    per_doubling = (b0 - b1) / math.log2(n1 / n0)
    if per_doubling <= 0:
        print("the last step up did not lower the mean bound: no extrapolation")
        return
    for target in (3.10, 3.00):
        if target >= b1:  # reached already
            continue
        need = n1 * 2 ** ((b1 - target) / per_doubling)
        print(f"an extrapolation, not a measurement: if the last gain per doubling held, {target:.2f} would take "
              f"about {need:,.0f} steps ({need / THREE_HOURS_STEPS:.1f} times the {THREE_HOURS_STEPS:,} of three "
              f"hours on two threads at 1.77 steps/s; {need / FAST_DAY_STEPS:.1f} times the {FAST_DAY_STEPS:,} at 2.49)")


def main() -> None:
    for recipe in (OLD, TODAY):
        ends = []
        print(f"\n{recipe}\n")
        print("| run | what | planned steps | test elbo_bpd (10,000) | median | worst image | mean of the other 9,999 |")
        print("|---|---|---|---|---|---|---|")
        for name, (r, steps, ev, _, what) in RUNS.items():
            e = _load(ev)
            if r != recipe or e is None:
                continue
            ends.append((steps, e["elbo_bpd"]))
            print(f"| {name} | {what} | {steps:,} | {e['elbo_bpd']:.4f} | {e['elbo_bpd_median']:.4f} | "
                  f"{e['elbo_bpd_max']:.2f} ({e['elbo_bpd_max_index']}) | "
                  f"{(e['elbo_bpd'] * e['images'] - e['elbo_bpd_max']) / (e['images'] - 1):.4f} |")
        if len(ends) >= 2:
            print()
            _gains(ends)
    _plot()


def _plot() -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e .[plots]): no plot")
        return
    fig, ax = plt.subplots(figsize=(7.0, 4.4))
    for name, (recipe, steps, ev, curve, what) in RUNS.items():
        c, e = _load(curve), _load(ev)
        if e is None:
            continue
        style = "--" if recipe == OLD else "-"
        if c is None:  # an end point only
            ax.plot([steps], [e["elbo_bpd"]], marker="*", markersize=12, linestyle="none",
                    label=f"{name}: {what}, {steps:,} steps")
            continue
        pts = sorted((int(s), v) for s, v in c["elbo_bpd"].items())
        line, = ax.plot([s for s, _ in pts], [v for _, v in pts], marker=".", linestyle=style,
                        label=f"{name} ({recipe}): {what}, {steps:,} steps")
        ax.plot([pts[-1][0]], [e["elbo_bpd"]], marker="*", markersize=12, color=line.get_color(), linestyle="none")
    ax.axhline(3.10, color="grey", linestyle="--", linewidth=0.8, label="goal 3.10")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("test elbo_bpd (a bound, bits/dim)")
    ax.set_ylim(3.0, 3.8)
    ax.set_title("One cosine each (dots: first 1,000 test images); stars: all 10,000 at the end", fontsize=9)
    ax.legend(fontsize=6.5)
    fig.tight_layout()
    for out in (RESULTS / "steps.png", DOCS_FIGURE):
        fig.savefig(out, dpi=110)
        print(f"written to {out}")


if __name__ == "__main__":
    main()
