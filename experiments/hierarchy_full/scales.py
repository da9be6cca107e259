"""How sharp each level code's prior and posterior are, and what the code carries: the mechanism behind the
ladder posterior's collapse.

For each level l of a hierarchical model, over test images and one posterior draw of every code (seed 0):
the median log-sigma of the encoder's bottom-up Gaussian, of the top-down prior p(z_l | z_{l+1}) at the drawn
parent, and of q(z_l | x, ...) that the bound uses (for a bottom-up model q is the encoder's Gaussian), and
z_l's KL in nats. A level whose prior is far sharper than 1 and whose q has the prior's scale is a
near-deterministic function of its parent; its KL says how much the image adds.

    PYTHONPATH=. python experiments/hierarchy_full/scales.py --models RUN_DIR [RUN_DIR ...] --images 1000 \
        --json experiments/hierarchy_full/results/scales.json
"""
from __future__ import annotations

import torch

from mechanism import probe_models  # this folder's mechanism probe: the same command line


@torch.no_grad()
def measure(model, x: torch.Tensor, seed: int) -> list[dict]:
    torch.manual_seed(seed)
    lat = model.latents
    post = lat.posterior(model._centered(model._prepare(x)))
    given, code = lat.draw(post)
    kl = lat.kl(given, code)
    rows = []
    for lvl in range(model.glow.levels):
        name, g = f"level{lvl}", lat.groups[f"level{lvl}"]
        _, lp = g.prior_params(code[g.parent] if g.parent else None, x.shape[0], x.device)
        rows.append({"level": lvl, "bottom_up_log_sigma": float(post[name][1].median()),
                     "prior_log_sigma": float(lp.median()), "q_log_sigma": float(given[name][1].median()),
                     "kl_nats": float(kl[name][0].mean())})
    return rows


def report(name: str, model, cfg, x: torch.Tensor, seed: int) -> dict:
    kind = getattr(cfg.model, "hier_posterior", "bottomup")
    r = {"hier_posterior": kind, "levels": measure(model, x, seed)}
    for v in r["levels"]:
        print(f"| {name} | {kind} | {v['level']} | {v['bottom_up_log_sigma']:.2f} / {v['prior_log_sigma']:.2f} / "
              f"{v['q_log_sigma']:.2f} | {v['kl_nats']:.2f} |")
    return r


def main() -> None:
    print("| model | posterior | level | median log-sigma: encoder / prior / q | KL nats |")
    print("|---|---|---|---|---|")
    probe_models(__doc__.splitlines()[0], report)


if __name__ == "__main__":
    main()
