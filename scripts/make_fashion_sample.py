"""Rebuild the small real-image sample shipped in flowvae/data/fashion_mnist_sample/.

    python scripts/make_fashion_sample.py [--root /usr/share/datasets/fashion-mnist] [--train 5000] [--test 1000]

Takes the first N train and test images of Fashion-MNIST (Zalando, MIT licence;
Debian package dataset-fashion-mnist) and writes them as gzipped idx files.
"""
import argparse
import gzip
import struct
from pathlib import Path

from flowvae.data.datasets import read_idx

OUT = Path(__file__).resolve().parents[1] / "flowvae" / "data" / "fashion_mnist_sample"


def write_idx(path: Path, array) -> None:
    dims = array.shape
    code = 0x08  # unsigned byte
    with gzip.GzipFile(path, "wb", mtime=0) as f:
        f.write(struct.pack(">BBBB", 0, 0, code, len(dims)))
        f.write(struct.pack(">" + "I" * len(dims), *dims))
        f.write(array.contiguous().numpy().tobytes())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--train", type=int, default=5000)
    ap.add_argument("--test", type=int, default=1000)
    a = ap.parse_args()
    root = Path(a.root)
    for prefix, n in (("train", a.train), ("t10k", a.test)):
        for kind in ("images-idx3", "labels-idx1"):
            name = f"{prefix}-{kind}-ubyte.gz"
            data = read_idx(root / name)[:n]
            write_idx(OUT / name, data)
            print(OUT / name, tuple(data.shape))


if __name__ == "__main__":
    main()
