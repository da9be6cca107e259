"""How sharply the flow's likelihood of an image changes along the global code, against how wide the posterior is.

For each image, with u at the centre of its bins (so only the code moves): the flow's bits/dim at the posterior
mean, the median and range over 128 draws of the code from q(z|x), and the largest change from moving one code
dimension by +-2 posterior standard deviations from the mean. An image whose bound moves with the draw of the
code (8910 under the 24,000-step run) shows it here; an ordinary image moves by hundredths.

    python experiments/bits_budget/sharpness.py --model runs/fm24k_sig --images 8910 3125 9183 6173 2528 0 1 2 3 4 5 \\
        --json experiments/bits_budget/results/sharpness_fm24k_sig.json
"""
from __future__ import annotations

import argparse
import json

import torch

from flowvae.checkpoint import load_checkpoint
from flowvae.config import DataConfig
from flowvae.data.datasets import load_dataset


@torch.no_grad()
def sharpness(model, x: torch.Tensor, draws: int = 128, sds: float = 2.0, seed: int = 0) -> dict:
    x_int = model._prepare(x)
    xc = model._centered(x_int)
    u, _ = model.dequantizer(xc, True)  # the centre of each bin: the code is the only noise
    y = (x_int + u) / 2 ** model.n_bits - 0.5
    mu, log_sd = model.latents.posterior(xc)["global"]
    sd = log_sd.exp()

    def flow_bpd(z):
        log_p, _ = model.glow.log_prob(y.expand(len(z), -1, -1, -1), *model.latents.conditioning({"global": z}))
        return model.bound.bpd(-log_p) + model.n_bits  # y is scaled by 2^-n_bits: its density in bin units

    e = torch.randn(draws, mu.shape[1], generator=torch.Generator().manual_seed(seed))
    drawn = flow_bpd(mu + sd * e)
    at_mean = float(flow_bpd(mu))
    dims = torch.arange(mu.shape[1])
    z = mu.repeat(2 * len(dims), 1)
    z[dims, dims] += sds * sd[0]
    z[len(dims) + dims, dims] -= sds * sd[0]
    gain = (flow_bpd(z) - at_mean).view(2, -1).max(0).values
    d = int(gain.argmax())
    kl = float((0.5 * (mu ** 2 + sd ** 2 - 1) - log_sd).sum())
    return {"at_mean": round(at_mean, 3), "median": round(float(drawn.median()), 3),
            "min": round(float(drawn.min()), 3), "max": round(float(drawn.max()), 3),
            "largest_move": round(float((drawn - drawn.median()).abs().max()), 3),
            "one_dim_gain": round(float(gain.max()), 3), "dim": d, "dim_sd": round(float(sd[0, d]), 3),
            "active_dims": int((sd < 0.5).sum()), "kl_nats": round(kl, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, nargs="+", default=[8910, 0, 1])
    ap.add_argument("--draws", type=int, default=128)
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, cfg, _ = load_checkpoint(a.model)
    if "global" not in getattr(model.latents, "names", []):
        raise SystemExit("error: sharpness needs a model with a global code")
    ds = load_dataset(DataConfig(dataset="fashion_mnist"), cfg.model, "test")
    print("| image | flow bpd at the posterior mean | median over draws of the code | range | largest move from the "
          "median | largest change from one dimension at +-2 sd | code dims with sd < 0.5 | KL (nats) |")
    print("|---|---|---|---|---|---|---|---|")
    rows = {}
    for i in a.images:
        r = rows[i] = sharpness(model, ds[torch.tensor([i])][0], a.draws)
        print(f"| {i} | {r['at_mean']:.3f} | {r['median']:.3f} | {r['min']:.3f}..{r['max']:.3f} | {r['largest_move']:.3f} "
              f"| {r['one_dim_gain']:.3f} (dim {r['dim']}, sd {r['dim_sd']:.3f}) | {r['active_dims']} | {r['kl_nats']} |",
              flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "draws": a.draws, "images": rows}, f, indent=1)


if __name__ == "__main__":
    main()
