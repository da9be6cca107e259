"""The floor of the Fréchet distance in the judge's features: N training images against the first N test
images (two samples of the data distribution itself), for the N of the sweeps.

    python experiments/sample_quality/baseline.py --classifier runs/classifier.pt --n 2000 10000
"""
import argparse
import json

import torch

from flowvae.config import DataConfig, ModelConfig
from flowvae.data.datasets import load_dataset
from flowvae.engine.analyze import load_or_train_classifier
from flowvae.engine.fid import frechet_distance

ap = argparse.ArgumentParser()
ap.add_argument("--classifier", required=True, help="the judge cache written by flowvae analyze / flowvae fid")
ap.add_argument("--n", type=int, nargs="+", default=[2000, 10000])
ap.add_argument("--json", default="")
a = ap.parse_args()
torch.set_num_threads(1)
train = load_dataset(DataConfig(dataset="fashion_mnist"), ModelConfig(), "train")
test = load_dataset(DataConfig(dataset="fashion_mnist"), ModelConfig(), "test")
judge, acc, how = load_or_train_classifier(__import__("pathlib").Path(a.classifier), train, test, 3, 0, False)
batches = lambda ds, n: [ds[torch.arange(i, min(i + 500, n))][0] for i in range(0, n, 500)]
res = {"classifier": how, "classifier_test_acc": acc, "train_vs_test": {}}
for n in a.n:
    res["train_vs_test"][n] = frechet_distance(judge, batches(test, n), batches(train, n))
    print(f"N={n}: first N training images vs first N test images: {res['train_vs_test'][n]:.4f}", flush=True)
if a.json:
    with open(a.json, "w") as f:
        json.dump(res, f, indent=1)
