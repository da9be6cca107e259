"""How often each of `flowvae analyze`'s judges names the class of the *real* image B, on the same 1,000
test pairs (A, B) the swap is scored on: the most a swap can score under that judge if its images are only as
recognisable as real ones.

    python experiments/global_swap/judge_ceiling.py --classifier runs/classifier.pt \
        --json experiments/global_swap/results/judge_ceiling.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from flowvae.config import load_config
from flowvae.data import load_dataset
from flowvae.engine.analyze import PixelJudge, _different_class_pairs, _images, load_or_train_classifier


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--classifier", required=True, help="the judge CNN's cache (flowvae analyze --classifier)")
    ap.add_argument("--pairs", type=int, default=1000)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_config(None, ["data.dataset=fashion_mnist"])
    train, test = load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test")
    torch.manual_seed(0)
    cnn, acc, _ = load_or_train_classifier(Path(a.classifier), train, test, 3, 0, False)
    xtr, ytr = _images(train, 10000)  # what analyze fits its logistic regression on (probe_train)
    logreg = PixelJudge(xtr, ytr)
    x, y = _images(test, len(test))
    _, ib = _different_class_pairs(y, a.pairs, 0)
    res = {"pairs": a.pairs}
    for name, judge in (("cnn", cnn), ("logreg", logreg)):
        res[name] = {"test_acc": (judge.predict(x) == y).float().mean().item(),
                     "real_B": (judge.predict(x[ib]) == y[ib]).float().mean().item()}
        print(f"{name:7s} test accuracy {res[name]['test_acc']:.4f}   on the pairs' real B {res[name]['real_B']:.3f}")
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
