"""A run's periodic test evaluations (its TensorBoard eval/* scalars: the bound, KL and active units per
latent group) as results/<run>/curve.json (or under --out).

    python experiments/hierarchy_full/curve.py RUN_DIR [--name NAME] [--out DIR] [--train-every N]

--train-every N also keeps the training scalars (train/*: loss terms, KL, gradient norm, skipped steps) at every
N-th step, under "train", for a run that stopped before its first evaluation.
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
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                    help="where the run's folder goes (default: this study's results/)")
    ap.add_argument("--train-every", type=int, default=0, help="also keep train/* scalars at every N-th step")
    a = ap.parse_args()
    # keep every event file of a resumed run (by default a restart at a lower step discards the later steps of
    # the files before it); where a step repeats, the latest value wins
    ea = EventAccumulator(str(a.run / "tb"), size_guidance={"scalars": 0}, purge_orphaned_data=False)
    ea.Reload()
    out = {tag[5:]: {str(e.step): e.value for e in ea.Scalars(tag)} for tag in ea.Tags()["scalars"] if tag.startswith("eval/")}
    out["step"] = max(e.step for key in ("train/elbo_bpd", "eval/elbo_bpd") if key in ea.Tags()["scalars"]
                      for e in ea.Scalars(key))
    if a.train_every:
        out["train"] = {tag[6:]: {str(e.step): e.value for e in ea.Scalars(tag) if e.step % a.train_every == 0}
                        for tag in ea.Tags()["scalars"] if tag.startswith("train/")}
    dest = a.out / (a.name or a.run.name) / "curve.json"
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(json.dumps(out, indent=1))
    print(f"written to {dest}")


if __name__ == "__main__":
    main()
