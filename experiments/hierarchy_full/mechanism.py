"""What each level's code buys in its own prior term: the mechanism behind a collapsing level latent.

For every Glow level l of a hierarchical model, the log-likelihood term of that level's prior (the split
half factored out at level l, or the top latent), in bits per image dim, with the codes at their posterior
means, and again with z_l alone re-drawn from its prior p(z_l | z_{l+1}) (every other code, the
dequantisation and the image held), and with z_l replaced by another test image's posterior mean. The
first gain is what z_l's posterior mean is worth against a draw from its prior; the second, the part of it
that is about this image (a code whose posterior mean is the same offset for every image gains nothing
there). z_l's KL is what it costs; a level whose image-specific gain stays below its KL is cheaper to leave
unused, and the optimiser collapses it.

    PYTHONPATH=. python experiments/hierarchy_full/mechanism.py --models RUN_DIR [RUN_DIR ...] \
        --images 1000 --json experiments/hierarchy_full/results/mechanism.json
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from flowvae import load_checkpoint
from flowvae.data import load_dataset
from flowvae.gaussian import normal_log_prob


def prior_terms(model, x_int: torch.Tensor, post: dict) -> list[torch.Tensor]:
    """Per image and level, log N(eps_l; 0, I) + log-det of level l's prior layer (nats), the codes
    being the means of ``post``, the dequantisation its mean (deterministic)."""
    glow, terms, hooks = model.glow, [], []
    for lvl, prior in enumerate(glow.priors):
        def hook(mod, args, out, lvl=lvl):
            h, ld = out
            part = h[:, glow.kept_channels[lvl]:] if lvl < glow.levels - 1 else h
            terms.append(normal_log_prob(part.double()) + ld.double())
        hooks.append(prior.register_forward_hook(hook))
    # the codes are exactly post's means: a ladder level is not merged with its prior again
    model.latents.draw = lambda p, deterministic=False: (p, {n: mu for n, (mu, _) in p.items()})
    try:
        model.terms(x_int, deterministic=True, posterior=post)
    finally:
        del model.latents.draw
        for h in hooks:
            h.remove()
    return terms


@torch.no_grad()
def measure(model, x: torch.Tensor, seed: int) -> dict:
    x_int = model._prepare(x)
    # q of each group given its parents' means (a ladder level's merge), and the code at those means
    post, means = model.latents.draw(model.latents.posterior(model._centered(x_int)), deterministic=True)
    flat = model.latents.flatten(means)
    kl = model.latents.kl(post, means)
    to_bpd = 1.0 / (model.num_dims * math.log(2))
    base = prior_terms(model, x_int, post)
    out = {"levels": []}
    for lvl in range(model.glow.levels):
        g = torch.Generator().manual_seed(seed + lvl)
        redrawn = model.latents.unflatten(model.resample_code(flat, lvl, generator=g))
        post_l = {name: (redrawn[name], ls) for name, (_, ls) in post.items()}
        moved = prior_terms(model, x_int, post_l)
        name = f"level{lvl}"  # another test image's posterior mean of z_l: the image-specific part alone
        post_o = {n: ((mu.roll(1, 0) if n == name else mu), ls) for n, (mu, ls) in post.items()}
        other = prior_terms(model, x_int, post_o)
        out["levels"].append({
            "level": lvl,
            "prior_term_bpd": float(-base[lvl].mean() * to_bpd),
            "prior_term_bpd_z_redrawn": float(-moved[lvl].mean() * to_bpd),
            "gain_bpd": float((base[lvl] - moved[lvl]).mean() * to_bpd),
            "prior_term_bpd_other_image_z": float(-other[lvl].mean() * to_bpd),
            "own_image_gain_bpd": float((base[lvl] - other[lvl]).mean() * to_bpd),
            "whole_flow_gain_bpd": float((sum(base) - sum(moved)).mean() * to_bpd),
            "kl_bpd": float(kl[f"level{lvl}"][0].mean() * to_bpd),
        })
    return out


def probe_models(description: str, report) -> None:
    """The command line both probes share: for each of ``--models`` (hierarchical), ``report(name, model,
    cfg, x, seed)`` on the first ``--images`` test images returns a JSON-able result; ``--json`` keeps them."""
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for name in a.models:
        model, cfg, _ = load_checkpoint(name)
        model.eval()
        if not model.hierarchical:
            raise SystemExit(f"{name} is not a hierarchical model")
        x = load_dataset(cfg.data, cfg.model, "test")[torch.arange(a.images)][0]
        results[name] = report(name, model, cfg, x, a.seed)
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(results, indent=1))
        print(f"written to {a.json}")


def report(name: str, model, cfg, x: torch.Tensor, seed: int) -> dict:
    r = measure(model, x, seed)
    r["split_prior"] = getattr(cfg.model, "split_prior", "kept")
    print(f"{name} (split prior reads: {r['split_prior']})")
    print("  level  prior term bpd  z_l re-drawn  gain  (whole flow)  another image's z_l  gain  KL of z_l bpd")
    for v in r["levels"]:
        print(f"  {v['level']:5d}  {v['prior_term_bpd']:14.4f}  {v['prior_term_bpd_z_redrawn']:12.4f}  "
              f"{v['gain_bpd']:.4f}  {v['whole_flow_gain_bpd']:12.4f}  {v['prior_term_bpd_other_image_z']:19.4f}  "
              f"{v['own_image_gain_bpd']:.4f}  {v['kl_bpd']:13.4f}")
    return r


def main() -> None:
    probe_models(__doc__.splitlines()[0], report)


if __name__ == "__main__":
    main()
