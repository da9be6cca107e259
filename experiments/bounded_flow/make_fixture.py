"""Write a test fixture of full Fashion-MNIST test images, for tests/test_bound_noise.py:

    # tests/data/fashion_mnist_hard.pt: the images whose bound depended most on the noise draw under a
    # shipped model through a runaway flow (experiments/bounded_flow/README.md)
    python experiments/bounded_flow/make_fixture.py 6573 4203 8033 1754 480
    # tests/data/fashion_mnist_sharp.pt: the image whose one-draw ELBO depends on the draw of the code under
    # the 24,000-step model (experiments/bits_budget/README.md)
    python experiments/bounded_flow/make_fixture.py 8910 --name fashion_mnist_sharp
"""
import argparse
from pathlib import Path

import torch

from flowvae.config import DataConfig, ModelConfig
from flowvae.data.datasets import load_dataset

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("indices", type=int, nargs="*", default=[6573, 4203, 8033, 1754, 480])
ap.add_argument("--name", default="fashion_mnist_hard", help="tests/data/<name>.pt")
a = ap.parse_args()
ds = load_dataset(DataConfig(dataset="fashion_mnist"), ModelConfig(), "test")
x, y = ds[torch.tensor(a.indices)]
out = Path(__file__).resolve().parents[2] / "tests" / "data" / f"{a.name}.pt"
torch.save({"indices": a.indices, "images": x.clone(), "labels": torch.as_tensor(y).clone(),
            "source": "Fashion-MNIST test set (MIT licence, Zalando SE), images at these indices"}, out)
print(f"wrote {out}: test images {a.indices}, {tuple(x.shape)} {x.dtype}")
