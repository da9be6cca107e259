"""Where does one image's bound go? Per flow step and prior: log-det and the largest activation.

    python experiments/decoupling/trace_image.py --checkpoint experiments/decoupling/long/global_b03 --index 6573 0

For each test image index: log p(y|z) and the KL, then, level by level, each flow step's log-det and
max |h| after it, and each split / top prior's log-det and the squared norm of its standardised output
(what the N(0, I) term charges). An image whose activations grow step after step is one the couplings
extrapolate on; a prior with a tiny scale would instead show as a huge prior log-det.
"""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from flowvae import load_checkpoint  # noqa: E402
from flowvae.data import load_dataset  # noqa: E402
from flowvae.flows.squeeze import squeeze2x2  # noqa: E402


@torch.no_grad()
def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--index", type=int, nargs="+", required=True, help="test image indices")
    a = ap.parse_args()
    torch.set_num_threads(1)
    m, cfg, _ = load_checkpoint(a.checkpoint)
    ds = load_dataset(cfg.data, cfg.model, "test")
    x = torch.stack([ds[i][0] for i in a.index])
    x_int = m._prepare(x)
    t = m.terms(x_int, deterministic=True)
    fmt = lambda v: " ".join(f"{float(e):>12.4g}" for e in v)  # noqa: E731
    print(f"{'image':<28}" + " ".join(f"{i:>12}" for i in a.index))
    print(f"{'log p(y|z) (nats)':<28}{fmt(t['log_p_y'])}")
    print(f"{'KL (nats)':<28}{fmt(t['kl_total'])}")
    conds = m.glow._conds(*m.latents.conditioning(t["code"]))
    h = (x_int + 0.5) / 2**m.n_bits - 0.5
    for lvl in range(m.glow.levels):
        h = squeeze2x2(h)
        for k, step in enumerate(m.glow.level_steps[lvl]):
            h, ld = step(h, conds[lvl])
            print(f"{f'level {lvl} step {k} log-det':<28}{fmt(ld)}")
            print(f"{f'level {lvl} step {k} max|h|':<28}{fmt(h.abs().amax((1, 2, 3)))}")
        h, ld = m.glow.priors[lvl](h, conds[lvl])
        part = h[:, m.glow.kept_channels[lvl]:] if lvl < m.glow.levels - 1 else h
        print(f"{f'level {lvl} prior log-det':<28}{fmt(ld)}")
        print(f"{f'level {lvl} prior |eps|^2':<28}{fmt(part.pow(2).sum((1, 2, 3)))}")
        if lvl < m.glow.levels - 1:
            h = h[:, : m.glow.kept_channels[lvl]]


if __name__ == "__main__":
    main()
