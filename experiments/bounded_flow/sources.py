"""Which part of the draw moves one image's bound: the dequantisation noise u, or one latent group's code?

For each test image and each source, 8 seeded draws in which only that source is random (u at its draw and
every code at its posterior mean, or u = 0.5 and one group drawn from q), and the bound's min..max over them.

    python experiments/bounded_flow/sources.py --models pretrained:fashion_mnist_hierarchical_small runs/hier_t2 \
        --images 6573 4203 --json experiments/bounded_flow/results/sources.json
"""
from __future__ import annotations

import argparse
import json
from contextlib import contextmanager
from pathlib import Path

import torch

from flowvae import load_checkpoint
from flowvae.config import load_config
from flowvae.data import load_dataset
from flowvae.latents.base import Latents

DRAWS = range(8)


@contextmanager
def only_random(model, source: str):
    """Within the block, model.loss draws only ``source`` ('u' or a latent group's name) at random."""
    draw, deq = Latents.draw, model.dequantizer.forward

    def partial_draw(self, post, deterministic=False):
        given, _ = draw(self, post, True)
        return given, {name: mu + torch.exp(ls) * torch.randn_like(mu) if name == source else mu
                       for name, (mu, ls) in given.items()}

    Latents.draw = partial_draw
    if source != "u":
        model.dequantizer.forward = lambda x, deterministic=False: deq(x, True)
    try:
        yield
    finally:
        Latents.draw = draw
        model.dequantizer.forward = deq


@torch.no_grad()
def spans(model, x: torch.Tensor) -> dict:
    out = {}
    for source in ["u", *model.latents.groups]:
        rows = []
        with only_random(model, source):
            for s in DRAWS:
                torch.manual_seed(s)
                rows.append(model.loss(x)["elbo_bpd"].double())
        b = torch.stack(rows)
        out[source] = [[round(float(lo), 3), round(float(hi), 3)] for lo, hi in zip(b.min(0).values, b.max(0).values)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--images", nargs="+", type=int, required=True, help="test-set indices")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    res = {}
    for name in a.models:
        model, cfg, _ = load_checkpoint(name)
        model.eval()
        test = load_dataset(load_config(None, ["data.dataset=fashion_mnist"]).data, cfg.model, "test")
        x = test[torch.tensor(a.images)][0]
        res[name] = {str(i): {} for i in a.images}
        for source, rows in spans(model, x).items():
            for i, (lo, hi) in zip(a.images, rows):
                res[name][str(i)][source] = [lo, hi]
        print(f"| model | image | {' | '.join(f'only {s} random' for s in res[name][str(a.images[0])])} |")
        for i in a.images:
            cells = " | ".join(f"{lo:.2f}..{hi:.2f} ({hi - lo:.2f})" for lo, hi in res[name][str(i)].values())
            print(f"| {name} | {i} | {cells} |")
    if a.json:
        a.json.write_text(json.dumps(res, indent=1))
        print(f"written to {a.json}")


if __name__ == "__main__":
    main()
