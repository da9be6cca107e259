"""One test image's bound over many draws of (code, u), in parts: which term moves on the draws that stand
apart from the median, and what the importance-weighted bound over 32 draws says at those seeds.

    PYTHONPATH=. python experiments/hierarchy_full/draws.py --models runs/ladder_floor_s1 --image 1754 \
        --json experiments/hierarchy_full/results/ladder_floor_s1/draws_1754.json
"""
import argparse
import json
import statistics

import torch

from flowvae import load_checkpoint
from flowvae.data import load_dataset
from flowvae.config import load_config


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", nargs="+", required=True)
    ap.add_argument("--image", type=int, default=1754, help="index in the Fashion-MNIST test set")
    ap.add_argument("--draws", type=int, default=256)
    ap.add_argument("--worst", type=int, default=4, help="how many of the highest draws to list")
    ap.add_argument("--k", type=int, default=32)
    ap.add_argument("--json")
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, [])
    x = load_dataset(cfg.data, cfg.model, "test")[torch.tensor([a.image])][0]
    report = {}
    for name in a.models:
        model, _, _ = load_checkpoint(name)
        model.eval()
        rows = []
        with torch.no_grad(), torch.random.fork_rng():
            for s in range(a.draws):
                torch.manual_seed(s)
                out = model.loss(x)
                rows.append({k: float(v.double().sum()) for k, v in out.items() if torch.is_tensor(v) and v.numel() == 1})
            elbo = [r["elbo_bpd"] for r in rows]
            worst = sorted(range(a.draws), key=lambda j: -elbo[j])[:a.worst]
            iw = {}
            for s in worst + [0]:
                torch.manual_seed(s)
                iw[s] = float(model.bound.bpd(-model.log_prob(x, k=a.k)))
        terms = {k: {"median": statistics.median(r[k] for r in rows), "worst": [rows[j][k] for j in worst]}
                 for k in rows[0]}
        report[name] = {"image": a.image, "draws": a.draws, "worst_seeds": worst, "terms": terms,
                        f"iw{a.k}_bpd_at_seed": iw}
        print(f"{name}, test image {a.image}, {a.draws} draws; the highest at seeds {worst}")
        for k, t in terms.items():
            print(f"  {k:18s} median {t['median']:9.4f}  highest draws " + "  ".join(f"{v:9.4f}" for v in t["worst"]))
        print(f"  iw{a.k}_bpd at those seeds and seed 0: " + ", ".join(f"{s}: {v:.4f}" for s, v in iw.items()))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
