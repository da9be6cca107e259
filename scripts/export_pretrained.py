"""Ship a trained run inside the package: its EMA weights, config and metrics, nothing else.

    python scripts/export_pretrained.py --run runs/final/zmap --name fashion_mnist \
        --metrics runs/final/zmap/eval_full.json runs/final/zmap/analysis.json

Writes flowvae/pretrained/<name>.pt (loadable as ``pretrained:<name>``) and <name>.json.
"""
import argparse
import json
from pathlib import Path

import torch

from flowvae.checkpoint import checkpoint_config, read_checkpoint, save_checkpoint, upgrade_state_dict
from flowvae.pretrained import HERE


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", required=True, help="run directory (or checkpoint file)")
    ap.add_argument("--name", required=True)
    ap.add_argument("--metrics", nargs="*", default=[], help="JSON files to copy into <name>.json")
    a = ap.parse_args()
    state = read_checkpoint(a.run)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    weights = upgrade_state_dict(weights, checkpoint_config(state, a.run).model)  # today's parameter names
    slim = {"model": {k: v.clone() for k, v in weights.items()}, "config": state["config"], "step": state["step"],
            "train_seconds": state["train_seconds"], "source": str(a.run)}
    out = HERE / f"{a.name}.pt"
    save_checkpoint(out, slim)
    meta = {"step": state["step"], "train_minutes": round(state["train_seconds"] / 60, 1), "config": state["config"]}
    for f in a.metrics:
        meta[Path(f).stem] = json.loads(Path(f).read_text())
    (HERE / f"{a.name}.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {a.name}.json")


if __name__ == "__main__":
    main()
