"""A resumable run directory from a model shipped without its optimiser state (``pretrained:NAME``), so that a
late phase can continue it with ``flowvae train --out RUN --resume ...`` the way run.sh continues a run of its own.

Everything but the optimiser is the shipped model's: weights, config, step, training time and the data
position its step implies (epoch and batch within it, as an uninterrupted run reaches them). AdamW starts
with zero moments, so the first steps of the phase differ from a continuation of the original run: the
experiment's README says so where it reports a phase started this way.

    python experiments/global_swap/from_weights.py --checkpoint pretrained:fashion_mnist --out runs/fm24k
    flowvae train --out runs/fm24k --resume loss.kl_beta=0.1 train.max_steps=28000 train.threads=1

Overrides after the options change the config first. One that adds modules the shipped model lacks (a flow
prior on z, ``model.prior=flow``) starts them from their own initialisation; the flow prior's coupling nets
start at zero, so the new model is the shipped one until training moves it. Any other mismatch is an error.

    python experiments/global_swap/from_weights.py --checkpoint pretrained:fashion_mnist --out runs/fp model.prior=flow
"""
import argparse
from pathlib import Path

import torch

from flowvae.checkpoint import checkpoint_config, read_checkpoint, save_checkpoint
from flowvae.config import ConfigError, apply_overrides
from flowvae.data import load_dataset
from flowvae.engine.train import build_optimizer, write_config
from flowvae.model import FlowVAE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", required=True, help="pretrained:NAME, a run directory or a checkpoint file")
    ap.add_argument("--out", required=True, type=Path, help="the run directory to create (must not hold a run)")
    ap.add_argument("overrides", nargs="*", help="section.key=value changes to the shipped config")
    a = ap.parse_args()
    if (a.out / "checkpoint.pt").exists():
        raise SystemExit(f"error: {a.out} already holds a run")
    state = read_checkpoint(a.checkpoint)
    try:
        cfg = apply_overrides(checkpoint_config(state, a.checkpoint), a.overrides)
    except ConfigError as e:
        raise SystemExit(f"error: {e}") from None
    model = FlowVAE.from_config(cfg)
    try:
        missing, unexpected = model.load_state_dict(state["model"], strict=False)
    except RuntimeError as e:  # a shape changed (model.z_dim, model.hidden, ...): those weights cannot be reused
        raise SystemExit(f"error: the overrides change the shape of shipped weights: {str(e).splitlines()[1].strip()}")
    new = [k for k in missing if ".prior." in k]
    if unexpected or len(new) != len(missing):
        raise SystemExit(f"error: the overrides change more than they add: missing {sorted(set(missing) - set(new))}, "
                         f"unexpected {unexpected}")
    if new:
        print(f"{len(new)} tensors new to the shipped model start from their initialisation: {new[0]} ...")
    opt = build_optimizer(cfg, model)
    batches = len(load_dataset(cfg.data, cfg.model, "train")) // cfg.train.batch_size
    step = int(state["step"])
    write_config(a.out, cfg)
    save_checkpoint(a.out / "checkpoint.pt", {
        "model": model.state_dict(), "ema": None, "optimizer": opt.state_dict(), "scaler": None,
        "step": step, "epoch": step // batches, "batch_in_epoch": step % batches, "skipped_steps": 0,
        "train_seconds": float(state.get("train_seconds", 0.0)), "planned_steps": step,
        "config": cfg.to_dict(), "world_size": 1, "grad_accum": cfg.train.grad_accum,
        "precision": cfg.train.precision, "rng": {"cpu": torch.get_rng_state(), "cuda": None},
    })
    print(f"{a.out}: step {step} of {a.checkpoint}, fresh AdamW; continue with flowvae train --out {a.out} --resume")


if __name__ == "__main__":
    main()
