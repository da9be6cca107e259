"""The table of experiments/bits_budget/README.md from results/eval_<run>.json and results/train_<run>.json.

    python experiments/bits_budget/table.py
"""
from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent / "results"


def main() -> None:
    print("| run | change | steps | train minutes (one shared thread) | test elbo_bpd (10,000) | median | worst image |")
    print("|---|---|---|---|---|---|---|")
    for ev in sorted(HERE.glob("eval_*.json")):
        run = ev.stem[len("eval_"):]
        tr = HERE / f"train_{run}.json"
        if not tr.exists():
            continue
        e, t = json.loads(ev.read_text()), json.loads(tr.read_text())
        change = " ".join(t["overrides"]) or "none (configs/fashion_mnist.yaml)"
        print(f"| {run} | {change} | {t['step']:,} | {t['train_minutes']} | {e['elbo_bpd']:.4f} | "
              f"{e['elbo_bpd_median']:.4f} | {e['elbo_bpd_max']:.2f} ({e['elbo_bpd_max_index']}) |")


if __name__ == "__main__":
    main()
