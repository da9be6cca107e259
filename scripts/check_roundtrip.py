"""Count test images for which decode(encode(x)) != x (and swap(x, x) != x for a hybrid).

    python scripts/check_roundtrip.py experiments/ablation/equal_budget/hybrid [--limit 10000]
"""
import argparse

import torch

from flowvae import load_checkpoint
from flowvae.data import load_dataset


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("checkpoint")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--batch-size", type=int, default=500)
    a = ap.parse_args()
    model, cfg, _ = load_checkpoint(a.checkpoint)
    ds = load_dataset(cfg.data, cfg.model, "test")
    n = min(len(ds), a.limit) if a.limit else len(ds)
    bad_rec = bad_swap = 0
    for i in range(0, n, a.batch_size):
        x = ds[torch.arange(i, min(n, i + a.batch_size))][0]
        z, eps = model.encode(x)
        bad_rec += int((model.decode(z, eps) != x).flatten(1).any(1).sum())
        if model.hybrid:
            bad_swap += int((model.swap(x, x) != x).flatten(1).any(1).sum())
    print(f"{a.checkpoint}: decode(encode(x)) != x for {bad_rec} of {n} test images"
          + (f"; swap(x, x) != x for {bad_swap}" if model.hybrid else ""))


if __name__ == "__main__":
    main()
