"""Write tests/data/fashion_mnist_hard.pt: the full Fashion-MNIST test images whose bound depended most on
the noise draw under a shipped model (experiments/bounded_flow/README.md), for tests/test_bound_noise.py.

    python experiments/bounded_flow/make_fixture.py 6573 4203 8033 1754 480
"""
import sys
from pathlib import Path

import torch

from flowvae.config import DataConfig, ModelConfig
from flowvae.data.datasets import load_dataset

indices = [int(a) for a in sys.argv[1:]] or [6573, 4203, 8033, 1754, 480]
ds = load_dataset(DataConfig(dataset="fashion_mnist"), ModelConfig(), "test")
x, y = ds[torch.tensor(indices)]
out = Path(__file__).resolve().parents[2] / "tests" / "data" / "fashion_mnist_hard.pt"
torch.save({"indices": indices, "images": x.clone(), "labels": torch.as_tensor(y).clone(),
            "source": "Fashion-MNIST test set (MIT licence, Zalando SE), images at these indices"}, out)
print(f"wrote {out}: test images {indices}, {tuple(x.shape)} {x.dtype}")
