"""Noise dependence of the per-image bound, and where in the Glow it comes from.

Three modes (README.md beside this file has the tables they printed):

    # per image: the bound under draws 0..7 of (z, u) (flowvae.engine.evaluate.bound_draws), one row per model
    python experiments/bounded_flow/probe.py --models pretrained:fashion_mnist pretrained:fashion_mnist_v2 \
        --images 6573 4203 0 1
    # the same, with a per-layer trace (largest activation, coupling shift and log-scale, prior mean and
    # log-scale, the split-off eps) for the image's lowest and highest draw
    python experiments/bounded_flow/probe.py --models pretrained:fashion_mnist --images 6573 --trace
    # the whole test set under evaluate's own draws (seeds 0-2, batches of 250): spread per image
    python experiments/bounded_flow/probe.py --models pretrained:fashion_mnist_v2 --all 0 --json out.json
    # a trained model with its couplings' shifts soft-bounded, its priors' log-sigma floored, or eps scored under
    # a base with linear tails, after the fact
    python experiments/bounded_flow/probe.py --models pretrained:fashion_mnist --images 6573 0 1 --shift-clamp 8
    python experiments/bounded_flow/probe.py --models pretrained:fashion_mnist --images 1754 480 --base-tail 3
    # each image alone in its batch, 256 draws: std and largest move from the median (tests/test_bound_noise.py)
    python experiments/bounded_flow/probe.py --models pretrained:fashion_mnist --images 6573 4203 8033 1754 480 \
        --alone --seeds $(seq 0 255)
    # the same with only u drawn (--hold code) or only the code drawn (--hold u): which noise moves the bound
    # the importance-weighted bound over 32 draws instead of one draw's ELBO (each mode): --k 32
"""
from __future__ import annotations

import argparse
import json
from collections import defaultdict

import torch

from flowvae.checkpoint import load_checkpoint
from flowvae.config import DataConfig
from flowvae.data.datasets import load_dataset
from flowvae.engine.evaluate import batch_seed, bound_draws
from flowvae.flows.coupling import AffineCoupling
from flowvae.flows.tails import base_density


def _install_trace(model, rec: dict) -> list:
    """Hooks recording, per image, max |output| of every flow step, max |shift| and max log_s of every
    coupling, max |mu| and min log_sigma of every prior and max |eps| of what it standardises."""
    undo = []
    for lvl, steps in enumerate(model.glow.level_steps):
        for k, step in enumerate(steps):
            name = f"L{lvl}S{k}"
            cp = step.layers[2]

            def params(xa, cond, orig=cp._params, name=name):
                shift, log_s = orig(xa, cond)
                rec[name + " max|shift|"] = shift.abs().flatten(1).max(1).values
                rec[name + " max log_s"] = log_s.flatten(1).max(1).values
                return shift, log_s
            cp._params = params
            undo.append(lambda cp=cp: delattr(cp, "_params"))
            h = step.register_forward_hook(lambda m, i, o, name=name: rec.__setitem__(name + " max|h|", o[0].abs().flatten(1).max(1).values))
            undo.append(h.remove)
        prior = model.glow.priors[lvl]

        def pparams(x, cond, orig=prior._params, name=f"prior{lvl}"):
            mu, ls = orig(x, cond)
            rec[name + " max|mu|"] = mu.abs().flatten(1).max(1).values
            rec[name + " min log_sigma"] = ls.flatten(1).min(1).values
            return mu, ls
        prior._params = pparams
        undo.append(lambda p=prior: delattr(p, "_params"))

        def eps_hook(m, i, o, name=f"prior{lvl}"):
            e = o[0][:, m.ck:] if hasattr(m, "ck") else o[0]
            rec[name + " max|eps|"] = e.abs().flatten(1).max(1).values
        undo.append(prior.register_forward_hook(eps_hook).remove)
    return undo


def trace(model, x, seed: int) -> dict:
    rec: dict = {}
    undo = _install_trace(model, rec)
    try:
        torch.manual_seed(seed)
        with torch.no_grad():
            model.loss(x)
    finally:
        for u in undo:
            u()
    return {k: v.tolist() for k, v in rec.items()}


def spread_all(model, ds, seeds, batch, limit, k=1):
    """Per-image bound of the first ``limit`` test images under each of ``evaluate``'s seeds (its batches
    and per-batch seeding): a [len(seeds), n] tensor. ``k`` > 1: the importance-weighted bound over k draws
    of (code, u) per image (``FlowVAE.log_prob``) instead of one draw's ELBO."""
    n = min(limit or len(ds), len(ds))
    out = torch.zeros(len(seeds), n, dtype=torch.float64)
    for b, lo in enumerate(range(0, n, batch)):
        x = ds[torch.arange(lo, min(lo + batch, n))][0]
        for si, s in enumerate(seeds):
            torch.manual_seed(batch_seed(s, b))
            with torch.no_grad():
                out[si, lo:lo + len(x)] = (model.loss(x)["elbo_bpd"].double() if k == 1
                                           else model.bound.bpd(-model.log_prob(x, k=k)).double())
    return out


def summarise(bpd, top=5):
    spread = bpd.max(0).values - bpd.min(0).values
    order = spread.argsort(descending=True)[:top]
    return {"images": bpd.shape[1], "mean_bpd_per_seed": [round(float(v), 4) for v in bpd.mean(1)],
            "median_bpd_per_seed": [round(float(v), 4) for v in bpd.median(1).values],
            "max_bpd_per_seed": [round(float(v), 3) for v in bpd.max(1).values],
            "spread_median": round(float(spread.median()), 5), "spread_p99": round(float(spread.quantile(0.99)), 4),
            "spread_max": round(float(spread.max()), 4), "images_spread_over_0.5": int((spread > 0.5).sum()),
            "largest_spreads": {int(i): [round(float(v), 3) for v in bpd[:, i]] for i in order}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--images", type=int, nargs="+", default=[6573, 4203, 0, 1])
    ap.add_argument("--seeds", type=int, nargs="+", default=None,
                    help="draws (default: 0..7 per image; evaluate's 0 1 2 with --all)")
    ap.add_argument("--trace", action="store_true", help="also the per-layer trace of the lowest and highest draw")
    ap.add_argument("--all", type=int, default=-1, metavar="N",
                    help="instead: the spread over evaluate's seeds (--seeds, default here 0 1 2) on the first N "
                         "test images (0 = all), in batches of --batch")
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--prior-floor", type=float, default=None,
                    help="post hoc: clamp every split/top prior's log-sigma from below at this value")
    ap.add_argument("--ordinary", type=int, default=0, metavar="N",
                    help="also print the mean bound of the first N test images under draw --seeds[0]")
    ap.add_argument("--shift-clamp", type=float, default=None,
                    help="post hoc: soft-bound every coupling's shift at this value (the trained weights unchanged)")
    ap.add_argument("--base-tail", type=float, default=None,
                    help="post hoc: score eps under the normal with linear tails beyond |eps| = K (model.base_tail)")
    ap.add_argument("--alone", action="store_true",
                    help="score each of --images in a batch of its own (as tests/test_bound_noise.py does)")
    ap.add_argument("--hold", choices=["code", "u"], default=None,
                    help="draw only the other noise: the code at its posterior mean, or u at the centre of the bin")
    ap.add_argument("--k", type=int, default=1,
                    help="each image's importance-weighted bound over K draws (evaluate's iwK_bpd) instead of one "
                         "draw's ELBO")
    ap.add_argument("--per-image", default="", metavar="PT",
                    help="with --all: also save the [seeds, images] tensor of per-image bounds (torch.save)")
    ap.add_argument("--json", default="")
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in a.models:
        model, cfg, _ = load_checkpoint(name)
        if a.shift_clamp is not None:
            for m in model.modules():
                if isinstance(m, AffineCoupling):
                    m.shift_clamp = a.shift_clamp
            name = f"{name} (shift_clamp={a.shift_clamp:g} post hoc)"
        if a.base_tail is not None:
            model.glow.base = base_density(a.base_tail)
            name = f"{name} (base_tail={a.base_tail:g} post hoc)"
        if a.prior_floor is not None:
            for prior in model.glow.priors:
                prior._params = (lambda x, c, orig=prior._params, f=a.prior_floor:
                                 (lambda mu, ls: (mu, ls.clamp(min=f)))(*orig(x, c)))
            name = f"{name} (prior log-sigma >= {a.prior_floor:g} post hoc)"
        if a.hold == "code":
            model.latents.draw = lambda post, deterministic=False, orig=model.latents.draw: orig(post, True)
            name = f"{name} (code held at the posterior mean)"
        elif a.hold == "u":
            model.dequantizer.forward = lambda xc, deterministic=False, orig=model.dequantizer.forward: orig(xc, True)
            name = f"{name} (u held at the centre of the bin)"
        ds = load_dataset(DataConfig(dataset="fashion_mnist"), cfg.model, "test")
        if a.all >= 0:
            seeds = a.seeds or [0, 1, 2]
            bpd = spread_all(model, ds, seeds, a.batch, a.all, a.k)
            if a.per_image:
                torch.save({"seeds": seeds, "k": a.k, "bpd": bpd}, a.per_image)
            results[name] = {"seeds": seeds, "batch": a.batch, "k": a.k, **summarise(bpd)}
            print(json.dumps({name: results[name]}), flush=True)
            continue
        a.seeds = a.seeds or list(range(8))
        x = ds[torch.tensor(a.images)][0]
        bpd = (torch.cat([bound_draws(model, x[j:j + 1], a.seeds, a.k) for j in range(len(x))], 1) if a.alone
               else bound_draws(model, x, a.seeds, a.k))
        results[name] = {"seeds": a.seeds, "images": {}}
        if a.ordinary:
            mean = float(bound_draws(model, ds[torch.arange(a.ordinary)][0], a.seeds[:1]).mean())
            results[name]["ordinary_mean_bpd"] = {"images": a.ordinary, "mean": round(mean, 4)}
            print(f"| {name} | mean of test images 0-{a.ordinary - 1} | {mean:.4f} |")
        for j, i in enumerate(a.images):
            col = bpd[:, j]
            row = {"min": round(float(col.min()), 3), "median": round(float(col.median()), 3),
                   "max": round(float(col.max()), 3), "spread": round(float(col.max() - col.min()), 3),
                   "std": round(float(col.std()), 4), "largest_move": round(float((col - col.median()).abs().max()), 3),
                   "draws_moved_over_0.2": int(((col - col.median()).abs() > 0.2).sum()),
                   "draws_moved_over_1": int(((col - col.median()).abs() > 1).sum())}
            results[name]["images"][i] = row
            print(f"| {name} | {i} | {row['min']} | {row['median']} | {row['max']} | {row['spread']} | {row['std']} | "
                  f"{row['largest_move']} |", flush=True)
            if a.trace:
                lo, hi = int(col.argmin()), int(col.argmax())
                t_lo, t_hi = trace(model, x[j:j + 1], a.seeds[lo]), trace(model, x[j:j + 1], a.seeds[hi])
                t_ref = trace(model, ds[torch.arange(250)][0], a.seeds[lo])  # ordinary images: their median
                results[name]["images"][i]["trace"] = {"low_draw": t_lo, "high_draw": t_hi}
                print(f"|   layer quantity | draw {a.seeds[lo]} ({col.min():.2f} bpd) | draw {a.seeds[hi]} ({col.max():.2f} bpd) "
                      f"| median of test images 0-249 |")
                for k in t_lo:
                    print(f"| {k} | {t_lo[k][0]:.3g} | {t_hi[k][0]:.3g} | {torch.tensor(t_ref[k]).median():.3g} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
