"""How far can a swap move the class? The global code of B decoded with local codes that carry nothing of A.

    python experiments/decoupling/swap_ceiling.py --runs experiments/decoupling/frontier --models global,small,small_b03 \
        --classifier experiments/decoupling/frontier/classifier.pt --out experiments/decoupling/frontier/ceiling

On the same 1,000 test pairs (A, B) of different classes as ``flowvae analyze`` (seed 0), decodes B's
global code z_B (posterior mean) with several local codes and reports the fraction the analyze CNN judge
labels as B's class:

* ``swap``: eps of A (``FlowVAE.swap(A, B)``), the number the decoupling goal is about;
* ``eps ~ N(0, T^2)``, T = 0, 0.7, 1: local codes that carry nothing of A. If eps were independent of
  the class given z (perfect decoupling), a swap would score about what these do, so they are the
  ceiling of the swap metric for this model's p(x | z);
* ``own eps`` (decode(z_B, eps_B) = B exactly) and the judge on the real B: the judge's own accuracy,
  the ceiling of every number here.

Writes ceiling.json and ceiling.md to --out.
"""
import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flowvae import load_checkpoint  # noqa: E402
from flowvae.data import load_dataset  # noqa: E402
from flowvae.engine.analyze import _different_class_pairs, _images, load_or_train_classifier  # noqa: E402


@torch.no_grad()
def ceiling(model, clf, xa, xb, yb, batch=250, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    judged = {"swap": [], "eps T=0": [], "eps T=0.7": [], "eps T=1": [], "own eps": []}
    for i in range(0, xa.shape[0], batch):
        a, b = xa[i : i + batch], xb[i : i + batch]
        z_b, eps_b = model.encode(b)
        _, eps_a = model.encode(a)
        outs = {"swap": model.decode(z_b, eps_a), "own eps": model.decode(z_b, eps_b)}
        for t in (0, 0.7, 1):
            outs[f"eps T={t}"] = model.decode(z_b, t * torch.randn(eps_b.shape, generator=g))
        for k, x in outs.items():
            judged[k].append(clf.predict(x))
    y = yb
    return {k: (torch.cat(v) == y).float().mean().item() for k, v in judged.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", default="experiments/decoupling/frontier")
    ap.add_argument("--models", default="global,small")
    ap.add_argument("--classifier", default="experiments/decoupling/frontier/classifier.pt")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--out", default="experiments/decoupling/frontier/ceiling")
    a = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {}
    for m in [s for s in a.models.split(",") if s]:
        model, cfg, _ = load_checkpoint(Path(a.runs) / m)
        test = load_dataset(cfg.data, cfg.model, "test")
        train = load_dataset(cfg.data, cfg.model, "train")
        clf, acc, _ = load_or_train_classifier(Path(a.classifier), train, test, 3, 0, False)
        x, y = _images(test, len(test))
        ia, ib = _different_class_pairs(y, a.pairs, 0)
        r = ceiling(model, clf, x[ia], x[ib], y[ib])
        r["judge on real B"] = (clf.predict(x[ib]) == y[ib]).float().mean().item()
        rows[m] = r
        print(m, json.dumps({k: round(v, 3) for k, v in r.items()}), flush=True)
    (out / "ceiling.json").write_text(json.dumps(rows, indent=2))
    keys = list(next(iter(rows.values())))
    lines = ["| model | " + " | ".join(f"z of B, {k}" if k != "judge on real B" else k for k in keys) + " |",
             "|---|" + "---|" * len(keys)]
    lines += [f"| {m} | " + " | ".join(f"{r[k]:.3f}" for k in keys) + " |" for m, r in rows.items()]
    (out / "ceiling.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
