"""How much of each level code's KL the training loss never charged: the free-bits share.

Training replaces a latent dimension's KL by a constant when its mean over the batch is under
``loss.level_free_bits`` nats (flowvae.objective.free_bits_kl), so that KL has no gradient; the bound the
evaluation reports charges all of it. For each level of a hierarchical model, over the first ``--images``
test images in batches of the run's training batch size and one posterior draw (seed 0): the level's KL
in nats per image, the part of it in dimensions under the floor (what training did not charge), and that
part in bits/dim of the bound.

    PYTHONPATH=. python experiments/hierarchy_full/freebits.py --models RUN_DIR [RUN_DIR ...] --images 1000 \
        --json experiments/hierarchy_full/results/freebits.json
"""
from __future__ import annotations

import math

import torch

from mechanism import probe_models  # this folder's mechanism probe: the same command line


@torch.no_grad()
def measure(model, cfg, x: torch.Tensor, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    lat, floor, bs = model.latents, cfg.loss.level_free_bits, cfg.train.batch_size
    dims = x[0].numel()
    sums = {lvl: {"kl": 0.0, "uncharged": 0.0, "dims_under": 0.0} for lvl in range(model.glow.levels)}
    batches = 0
    for i in range(0, x.shape[0], bs):
        xb = x[i:i + bs]
        post = lat.posterior(model._centered(model._prepare(xb)))
        given, code = lat.draw(post)
        kl = lat.kl(given, code)
        batches += 1
        for lvl, s in sums.items():
            per_image, per_dim = kl[f"level{lvl}"]
            mean_dim = per_dim.mean(0)
            under = mean_dim < floor
            s["kl"] += float(per_image.sum())
            s["uncharged"] += float(per_dim[:, under].sum())
            s["dims_under"] += float(under.float().mean())
    n = x.shape[0]
    rows = []
    for lvl, s in sums.items():
        rows.append({"level": lvl, "free_nats_per_dim": floor, "kl_nats": s["kl"] / n,
                     "uncharged_nats": s["uncharged"] / n, "share_of_dims_under_floor": s["dims_under"] / batches,
                     "uncharged_bpd": s["uncharged"] / n / (dims * math.log(2))})
    return rows


def report(name: str, model, cfg, x: torch.Tensor, seed: int) -> dict:
    r = {"levels": measure(model, cfg, x, seed)}
    for v in r["levels"]:
        print(f"| {name} | {v['free_nats_per_dim']:g} | {v['level']} | {v['kl_nats']:.2f} | {v['uncharged_nats']:.2f} | "
              f"{v['share_of_dims_under_floor']:.2f} | {v['uncharged_bpd']:.4f} |")
    return r


def main() -> None:
    print("| model | free nats per dim | level | KL nats | of it under the floor (not charged in training) | "
          "share of dims under the floor | uncharged, bits/dim |")
    print("|---|---|---|---|---|---|---|")
    probe_models(__doc__.splitlines()[0], report)


if __name__ == "__main__":
    main()
