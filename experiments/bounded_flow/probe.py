"""Noise dependence of the per-image bound, and where in the Glow it comes from.

For each model and each test image, the bound (elbo bits/dim) under the dequantisation draws of
``flowvae evaluate``'s seeds (the image's batch of ``--batch`` images, seeded as evaluate seeds it), and
a per-layer trace of the largest activation, coupling shift and prior log-scale for the worst draw.

    python experiments/bounded_flow/probe.py --model pretrained:fashion_mnist_v2 --images 6573 4203 0 1 2
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from flowvae.checkpoint import load_checkpoint
from flowvae.config import DataConfig
from flowvae.data.datasets import load_dataset
from flowvae.engine.evaluate import batch_seed
from flowvae.flows.coupling import AffineCoupling
from flowvae.flows.priors import GaussianizeSplit, GaussianizeTop


def trace_hooks(model, rec):
    """Record max |shift|, max |log_s| of each coupling, max |output| of each step, prior log-sigma range."""
    hooks = []
    for lvl, steps in enumerate(model.glow.level_steps):
        for k, step in enumerate(steps):
            cp = step.layers[2]
            orig = cp._params

            def params(xa, cond, orig=orig, name=f"L{lvl}S{k}"):
                shift, log_s = orig(xa, cond)
                rec[name + ".shift"].append(shift.detach().abs().flatten(1).max(1).values)
                return shift, log_s
            cp._params = params
            hooks.append((cp, "_params"))

            def out_hook(mod, inp, out, name=f"L{lvl}S{k}"):
                rec[name + ".out"].append(out[0].detach().abs().flatten(1).max(1).values)
            hooks.append(step.register_forward_hook(out_hook))
    for lvl, prior in enumerate(model.glow.priors):
        orig = prior._params

        def pparams(x, cond, orig=orig, name=f"prior{lvl}"):
            mu, ls = orig(x, cond)
            rec[name + ".mu"].append(mu.detach().abs().flatten(1).max(1).values)
            rec[name + ".log_sigma_min"].append(ls.detach().flatten(1).min(1).values)
            return mu, ls
        prior._params = pparams
        hooks.append((prior, "_params"))
    return hooks


def bound_draws(model, ds, index, seeds, batch):
    b = index // batch
    lo = b * batch
    x = torch.stack([ds[i][0] for i in range(lo, min(lo + batch, len(ds)))])
    out = {}
    for s in seeds:
        torch.manual_seed(batch_seed(s, b))
        rec = defaultdict(list)
        hooks = trace_hooks(model, rec)
        with torch.no_grad():
            r = model.loss(x)
        for h in hooks:
            if isinstance(h, tuple):
                del h[0]._params  # back to the class method
            else:
                h.remove()
        j = index - lo
        typical = {k: float(torch.cat(v).median()) for k, v in rec.items()}
        out[s] = {"elbo_bpd": float(r["elbo_bpd"][j]), "batch_median_bpd": float(r["elbo_bpd"].median()),
                  "trace": {k: float(torch.cat(v)[j]) for k, v in rec.items()}, "trace_batch_median": typical}
    return out


def spread_all(model, ds, seeds, batch, limit):
    """Per-image bound (bits/dim) of the first ``limit`` test images under each seed, as ``evaluate`` draws
    them: a [len(seeds), n] tensor."""
    n = min(limit or len(ds), len(ds))
    out = torch.zeros(len(seeds), n, dtype=torch.float64)
    for b, lo in enumerate(range(0, n, batch)):
        x = torch.stack([ds[i][0] for i in range(lo, min(lo + batch, n))])
        for si, s in enumerate(seeds):
            torch.manual_seed(batch_seed(s, b))
            with torch.no_grad():
                out[si, lo:lo + len(x)] = model.loss(x)["elbo_bpd"].double()
    return out


def summarise(bpd, seeds, top=5):
    spread = bpd.max(0).values - bpd.min(0).values
    order = spread.argsort(descending=True)[:top]
    return {"images": bpd.shape[1], "mean_bpd_per_seed": [round(float(v), 4) for v in bpd.mean(1)],
            "max_bpd_per_seed": [round(float(v), 3) for v in bpd.max(1).values],
            "spread_median": round(float(spread.median()), 5), "spread_p99": round(float(spread.quantile(0.99)), 4),
            "spread_max": round(float(spread.max()), 4),
            "largest_spreads": {int(i): [round(float(v), 3) for v in bpd[:, i]] for i in order}}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--images", type=int, nargs="+", default=[6573, 4203])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--trace", action="store_true", help="print the per-layer trace")
    ap.add_argument("--json", default="")
    ap.add_argument("--all", type=int, default=-1, metavar="N",
                    help="instead: the per-image spread over the seeds on the first N test images (0 = all)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, cfg, _ = load_checkpoint(a.model)
    ds = load_dataset(DataConfig(dataset="fashion_mnist"), cfg.model, "test")
    if a.all >= 0:
        summary = summarise(spread_all(model, ds, a.seeds, a.batch, a.all), a.seeds)
        print(json.dumps({"model": a.model, **summary}))
        if a.json:
            with open(a.json, "w") as f:
                json.dump({"model": a.model, "batch": a.batch, "seeds": a.seeds, **summary}, f, indent=1)
        return
    res = {}
    for i in a.images:
        d = bound_draws(model, ds, i, a.seeds, a.batch)
        vals = [d[s]["elbo_bpd"] for s in a.seeds]
        res[i] = {"bpd": vals, "spread": max(vals) - min(vals), "draws": d}
        print(f"{a.model} image {i}: bpd per seed {['%.4f' % v for v in vals]}  spread {max(vals) - min(vals):.4f}")
        if a.trace:
            worst = max(a.seeds, key=lambda s: d[s]["elbo_bpd"])
            best = min(a.seeds, key=lambda s: d[s]["elbo_bpd"])
            for k in d[worst]["trace"]:
                print(f"   {k:22s} worst {d[worst]['trace'][k]:12.4g}  best {d[best]['trace'][k]:10.4g}  "
                      f"batch median {d[best]['trace_batch_median'][k]:10.4g}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"model": a.model, "batch": a.batch, "seeds": a.seeds, "images": res}, f, indent=1)


if __name__ == "__main__":
    main()
