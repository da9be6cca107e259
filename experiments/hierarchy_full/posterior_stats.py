"""The global code's posterior q(z | x) on the first test images, for a look at a run's weights: KL per image
(nats), the largest |mu|, and how many of the (image, dimension) log-sigmas sit at either end of the clamp
(flowvae.latents.base.LOG_SIGMA_RANGE). Used on global_warm's checkpoints before and at its divergence.

    PYTHONPATH=. python experiments/hierarchy_full/posterior_stats.py --models CKPT [CKPT ...] --images 1000 \
        --json experiments/hierarchy_full/results/global_warm/posterior_stats.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flowvae import load_checkpoint
from flowvae.data import load_dataset
from flowvae.gaussian import normal_kl
from flowvae.latents.base import LOG_SIGMA_RANGE


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    print("| checkpoint | step | KL nats, median | KL nats, max | largest abs(mu) | log-sigma min / max | "
          "share at the lower / upper clamp |")
    print("|---|---|---|---|---|---|---|")
    for name in a.models:
        model, cfg, meta = load_checkpoint(name, ema=False)
        model.eval()
        x = load_dataset(cfg.data, cfg.model, "test")[torch.arange(a.images)][0]
        mu, log_sigma = model.posterior(x)["global"]
        kl = normal_kl(mu, log_sigma).sum(1)
        lo, hi = LOG_SIGMA_RANGE
        r = {"step": meta.get("step"), "kl_nats_median": float(kl.median()), "kl_nats_max": float(kl.max()),
             "abs_mu_max": float(mu.abs().max()), "log_sigma_min": float(log_sigma.min()),
             "log_sigma_max": float(log_sigma.max()),
             "share_at_lower_clamp": float((log_sigma <= lo + 1e-4).float().mean()),
             "share_at_upper_clamp": float((log_sigma >= hi - 1e-4).float().mean())}
        results[name] = r
        print(f"| {name} | {r['step']} | {r['kl_nats_median']:.1f} | {r['kl_nats_max']:.1f} | {r['abs_mu_max']:.2f} | "
              f"{r['log_sigma_min']:.2f} / {r['log_sigma_max']:.2f} | "
              f"{r['share_at_lower_clamp']:.3f} / {r['share_at_upper_clamp']:.3f} |")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1))
        print(f"written to {a.json}")


if __name__ == "__main__":
    main()
