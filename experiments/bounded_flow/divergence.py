"""A run's logged training loss and gradient norm (before clipping) over a range of steps, from its TensorBoard
events: where a run that stopped on non-finite steps started to go (section 7).

    python experiments/bounded_flow/divergence.py runs/tail2_clean --from 2000 --to 2800 \
        --json experiments/bounded_flow/results/divergence_tail2_clean.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--from", dest="lo", type=int, default=0)
    ap.add_argument("--to", dest="hi", type=int, default=10**9)
    ap.add_argument("--json", type=Path, default=None)
    a = ap.parse_args()
    ea = EventAccumulator(str(a.run / "tb"), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    ea.Reload()
    series = {tag: {e.step: e.value for e in ea.Scalars(f"train/{tag}")} for tag in ("elbo_bpd", "grad_norm", "skipped_steps")}
    rows = [{"step": s, **{tag: (v[s] if math.isfinite(v[s]) else str(v[s])) for tag, v in series.items() if s in v}}
            for s in sorted(series["grad_norm"]) if a.lo <= s <= a.hi]
    print("| step | train elbo_bpd (log step) | gradient norm before clipping | skipped steps so far |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['step']} | {r.get('elbo_bpd')} | {r.get('grad_norm')} | {r.get('skipped_steps')} |")
    if a.json:
        a.json.write_text(json.dumps({"run": str(a.run), "rows": rows}, indent=1))
        print(f"written to {a.json}")


if __name__ == "__main__":
    main()
