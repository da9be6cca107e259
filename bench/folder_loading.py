"""Image-folder loading: the folder listing through torchvision's ImageFolder helpers against the
hand-written listing flowvae had before, and the cost of the exact mode conversion in the up-front check.

    python bench/folder_loading.py --images 2000 --rounds 7

It writes ``--images`` 28x28 greyscale PNGs in 10 class folders, then each round times, interleaved:

* list, hand-written: ``os.walk`` over the class folders (the listing flowvae used before);
* list, torchvision: ``flowvae.data.list_images`` (``find_classes`` + ``make_dataset``);
* check, decode only: ``PIL.Image.open(f).load()`` for every file (the up-front check before);
* check, decode + convert: ``flowvae.data.datasets._validate_images`` (decode, convert each mode exactly);
* read all: every image through ``iterate_batches`` of the loaded dataset, batch 256.

It prints the median of each over the rounds and the ratios that compare the old and the new way.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from flowvae.config import load_config  # noqa: E402
from flowvae.data import iterate_batches, list_images, load_dataset  # noqa: E402
from flowvae.data.datasets import IMG_EXTENSIONS, _validate_images  # noqa: E402


def list_handwritten(folder: Path):
    files, labels = [], []
    subdirs = sorted(d for d in folder.iterdir() if d.is_dir())
    for label, d in (list(enumerate(subdirs)) or [(0, folder)]):
        for root, _, names in sorted(os.walk(d)):
            for n in sorted(names):
                if n.lower().endswith(IMG_EXTENSIONS):
                    files.append(Path(root) / n)
                    labels.append(label)
    return files, labels


def decode_only(files):
    for f in files:
        with Image.open(f) as im:
            im.load()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp())
    rng = np.random.default_rng(0)
    for i in range(args.images):
        d = root / f"class{i % 10}"
        d.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(d / f"{i}.png")
    files, _ = list_images(root)
    assert (files, _) == list_handwritten(root), "the two listings differ"
    cfg = load_config(None, ["data.dataset=folder", f"data.root={root}", "data.test_fraction=0.1"])
    ds = load_dataset(cfg.data, cfg.model, "train")
    jobs = {
        "list, hand-written": lambda: list_handwritten(root),
        "list, torchvision": lambda: list_images(root),
        "check, decode only": lambda: decode_only(files),
        "check, decode + convert": lambda: _validate_images(files, False, "bench"),
        "read all (batches of 256)": lambda: sum(len(x) for x, _ in iterate_batches(ds, 256)),
    }
    times = {k: [] for k in jobs}
    for _ in range(args.rounds):
        for name, job in jobs.items():
            t = time.perf_counter()
            job()
            times[name].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{args.images} PNGs of 28x28, {args.rounds} rounds, medians:")
    for k, v in med.items():
        print(f"  {k:<28} {v * 1000:9.1f} ms  ({v / args.images * 1e6:6.1f} us/image)")
    print(f"listing, torchvision / hand-written: {med['list, torchvision'] / med['list, hand-written']:.2f}x")
    print(f"up-front check, decode + convert / decode only: "
          f"{med['check, decode + convert'] / med['check, decode only']:.2f}x")


if __name__ == "__main__":
    main()
