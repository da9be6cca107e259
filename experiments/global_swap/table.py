"""The table of experiments/global_swap/README.md from results/eval_<run>.json and results/analysis_<run>.json.

    python experiments/global_swap/table.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
BASE = HERE.parent / "bounded_flow" / "results"  # the 9,172-step run both continue from (pretrained:fashion_mnist)
RUNS = [("base", "the 9,172-step run (pretrained:fashion_mnist)", BASE / "eval_shiftclamp8.json", BASE / "analysis_shiftclamp8.json")]
RUNS += [(run, what, HERE / "results" / f"eval_{run}.json", HERE / "results" / f"analysis_{run}.json") for run, what in
         (("more", "+2,000 steps, KL weight 1 (the control)"), ("b03", "+2,000 steps, KL weight 0.3"),
          ("b01", "+2,000 steps, KL weight 0.1"), ("b01_long", "+4,000 steps, KL weight 0.1"))]


def main() -> None:
    print("| run | what | test elbo_bpd (10,000) | vs base | KL nats | active units | swap → B's class (cnn / logreg) | "
          "texture follows A | resample: class change (cnn) |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = None
    for run, what, ev, an in RUNS:
        if not (ev.exists() and an.exists()):
            continue
        e, a = json.loads(ev.read_text()), json.loads(an.read_text())
        base = e["elbo_bpd"] if base is None else base
        sw = a["swap"]["global"]
        print(f"| {run} | {what} | {e['elbo_bpd']:.4f} | {e['elbo_bpd'] - base:+.4f} | {e['kl_nats']:.1f} | "
              f"{a['groups']['global']['active_units']} of 64 | {sw['to_global_class']['cnn']:.3f} / "
              f"{sw['to_global_class']['logreg']:.3f} | {sw['texture_follows_local']:.3f} | "
              f"{a['resample']['global']['class_change']['cnn']:.3f} |")


if __name__ == "__main__":
    main()
