"""A run's test-bound curve (its TensorBoard eval/elbo_bpd and eval/kl_nats) as results/<run>/curve.json.

    python experiments/hierarchy_full/curve.py RUN_DIR [--name NAME]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--name", default=None, help="folder under results/ (default: the run's folder name)")
    a = ap.parse_args()
    ea = EventAccumulator(str(a.run / "tb"), size_guidance={"scalars": 0})
    ea.Reload()
    out = {key: {str(e.step): e.value for e in ea.Scalars(f"eval/{key}")} for key in ("elbo_bpd", "kl_nats")}
    out["step"] = max(e.step for key in ("train/elbo_bpd", "eval/elbo_bpd") for e in ea.Scalars(key))
    dest = Path(__file__).resolve().parent / "results" / (a.name or a.run.name) / "curve.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))
    print(f"written to {dest}")


if __name__ == "__main__":
    main()
