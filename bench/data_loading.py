"""Can the data keep a GPU fed? The folder loader against a prepared array, next to the model's training speed.

    python bench/data_loading.py --dir /tmp/celeba_synth --images 20000 --out bench/results/data_loading/cpu.json

1. Makes ``--images`` synthetic JPEGs of 178x218 (CelebA's size; smooth random colour fields plus noise,
   quality 90) in ``--dir`` (kept between runs; never in the repository).
2. Times the folder loader on them with CelebA's pipeline (centre crop 148, bicubic resize to 64x64,
   ``flowvae.data.datasets.FileImages`` through ``iterate_batches``) with 0, 1 and 2 DataLoader workers,
   shuffled batches of 64, interleaved over ``--rounds`` rounds (median img/s).
3. ``flowvae prepare``'s decode of the whole folder into one uint8 .npy (``--workers`` processes), and the
   prepared array's loader (memory-mapped, the same shuffled batches).
4. The model's training img/s at configs/celeba64.yaml (4 levels x 32 steps x 512 channels, 3x64x64, 5-bit), on
   this CPU at ``--model-batch`` (one thread), and its FLOPs per training image (torch's FlopCounterMode): a
   device that sustains F FLOP/s trains at F / (FLOPs per image) images per second.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

SIZE = (218, 178)  # H x W of CelebA's aligned images


def make_images(folder: Path, n: int, seed: int = 0) -> int:
    """Write the missing ones of ``n`` synthetic JPEGs; returns how many were written."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    written = 0
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        coarse = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)  # drawn for every i: the content is fixed by the seed
        noise = rng.normal(0, 8, (*SIZE, 3))
        if path.exists():
            continue
        base = np.asarray(Image.fromarray(coarse).resize(SIZE[::-1], Image.BICUBIC), dtype=np.float64)
        Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8)).save(path, quality=90)
        written += 1
    return written


def loader_rate(ds, workers: int, images: int, batch: int, seed: int) -> float:
    from flowvae.data import iterate_batches

    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:images]
    t0, n = time.perf_counter(), 0
    for x, _ in iterate_batches(ds, batch, indices=idx, workers=workers):
        n += x.shape[0]
    return n / (time.perf_counter() - t0)


def model_rate(batch: int, steps: int) -> dict:
    from benchmark import Bench
    from roofline import training_flops

    a = SimpleNamespace(levels=4, steps=32, hidden=512, batch=batch, precision="fp32", coupling_impl="auto",
                        config="celeba64.yaml", overrides=[])
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2 * batch, 3, 64, 64), dtype=torch.uint8, generator=g)
    b = Bench("flowvae_hybrid", a, torch.device("cpu"), images)
    flops = training_flops(b, images[:batch]) / batch
    b.train_steps(1)
    return {"train_img_s": b.train_steps(steps), "gflop_per_image": flops / 1e9, "batch": batch, "steps": steps}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="/tmp/celeba_synth")
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--timed-images", type=int, default=1024, help="images loaded per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="decoding processes of the prepare step")
    ap.add_argument("--model-batch", type=int, default=8)
    ap.add_argument("--model-steps", type=int, default=1)
    ap.add_argument("--out", default="")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    from flowvae.data.datasets import FileImages, list_images
    from flowvae.data.prepare import load_array, prepare_folder
    from roofline import cpu_name

    folder = Path(a.dir)
    t0 = time.perf_counter()
    made = make_images(folder / "img", a.images)
    print(f"{made} JPEGs written in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    files, labels = list_images(folder / "img")
    files, labels = files[: a.images], labels[: a.images]
    ds = FileImages(files, labels, 3, (64, 64), "synthetic celeba", center_crop=148)
    npy = folder / "celeba64.npy"
    t0 = time.perf_counter()
    prepare_folder(folder / "img", npy, size=64, center_crop=148, workers=a.workers)
    prep_s = time.perf_counter() - t0
    arr = load_array(str(npy), "train", 0.1)
    rates = {f"folder, {w} workers": [] for w in (0, 1, 2)} | {"prepared array (memory map)": []}
    for r in range(a.rounds):
        for w in (0, 1, 2):
            rates[f"folder, {w} workers"].append(loader_rate(ds, w, a.timed_images, 64, seed=r))
        rates["prepared array (memory map)"].append(loader_rate(arr, 0, min(len(arr), 20 * a.timed_images), 64, seed=r))
        print(f"round {r + 1}: " + ", ".join(f"{k} {v[-1]:.0f}" for k, v in rates.items()), file=sys.stderr, flush=True)
    model = model_rate(a.model_batch, a.model_steps)
    res = {"setup": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "images": len(files), "jpeg": "178x218, quality 90",
                     "pipeline": "centre crop 148, bicubic resize 64x64", "rounds": a.rounds, "timed_images": a.timed_images,
                     "torch": torch.__version__},
           "loader_img_s": {k: round(statistics.median(v), 1) for k, v in rates.items()},
           "prepare": {"seconds": round(prep_s, 1), "workers": a.workers, "img_s": round(len(files) / prep_s, 1),
                       "mb": round(npy.stat().st_size / 2**20, 1)},
           "model_celeba64": {k: round(v, 3) for k, v in model.items()}}
    print(json.dumps(res, indent=2))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(res, indent=2))
    return res


if __name__ == "__main__":
    main()
