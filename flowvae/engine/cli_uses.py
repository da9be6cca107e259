"""``flowvae score | inpaint | denoise``: the command-line side of uses/score.py and uses/restore.py."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from ..data import load_dataset
from ..visualize import save_grid
from ..uses import restore
from ..uses.score import check_reference, score_dataset


def _user_images(path: str, model):
    """A dataset of one image file or every image under a folder (subfolders included), converted to the
    model's channels and size by the same loader as data.dataset=folder."""
    from ..data.datasets import FileImages, _IMG_EXT, _list_images

    p = Path(path).expanduser()
    if p.is_file():
        files, labels = [p], [0]
    elif p.is_dir():
        files, labels = _list_images(p)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(_IMG_EXT)}) under {p}")
    else:
        raise FileNotFoundError(f"image file or folder not found: {p}")
    c, h, w = model.image_shape
    return FileImages(files, labels, c, (h, w), f"images {p}")


def _inputs(args, model, cfg):
    """(uint8 images, names) from --images or the test set."""
    if args.images:
        ds = _user_images(args.images, model)
        x, _ = ds[torch.arange(len(ds))]
        return x, [Path(f).stem for f in ds.files]
    ds = load_dataset(cfg.data, cfg.model, "test")
    if args.first + args.n > len(ds):
        raise ValueError(f"asked for test images {args.first}..{args.first + args.n - 1}, the test set has {len(ds)}")
    idx = torch.arange(args.first, args.first + args.n)
    return ds[idx][0], [f"test{i}" for i in idx.tolist()]


def _save_each(images, names, folder, suffix: str) -> None:
    from PIL import Image

    d = Path(folder)
    d.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images.cpu(), names):
        a = img.permute(1, 2, 0).numpy()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(d / f"{name}{suffix}.png")


def run_use(args, model, cfg, run_dir: Path) -> int:
    torch.manual_seed(args.seed)
    if args.command == "score":
        reference = None
        if args.reference:
            from ..checkpoint import load_checkpoint

            reference = load_checkpoint(args.reference, device=model.device)[0]
            pass
        ds = _user_images(args.images, model) if args.images else load_dataset(cfg.data, cfg.model, args.split)
        scores, labels = score_dataset(model, ds, k=args.k, batch_size=args.batch_size, limit=args.limit, progress=True,
                                       reference=reference)
        out = Path(args.out) if args.out else run_dir / "scores.csv"
        if out.suffix.lower() != ".csv":
            raise ValueError(f"--out must be a .csv file, got {out}")
        out.parent.mkdir(parents=True, exist_ok=True)
        n = len(labels)
        source = ([str(f) for f in ds.files[:n]] if args.images else [f"{args.split}{i}" for i in range(n)])
        keys = list(scores)
        with open(out, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "image", "label", *keys])
            for i in range(n):
                w.writerow([i, source[i], int(labels[i]), *(f"{float(scores[k][i]):.5f}" for k in keys)])
        print(f"{n} images; mean scores (bits/dim, higher = more anomalous):")
        for k in keys:
            print(f"  {k:<15} {scores[k].mean():.4f}")
        print(f"written to {out}")
        return 0

    x, names = _inputs(args, model, cfg)
    g = torch.Generator().manual_seed(args.seed)
    grey = torch.full_like(x, 128)
    if args.command == "inpaint":
        c, h, w = model.image_shape
        if args.mask in restore.BUILTIN_MASKS:
            mask = restore.builtin_mask(args.mask, (c, h, w), x.shape[0], args.fraction, generator=g)
        else:
            mask = restore.load_mask(args.mask, (c, h, w)).expand(x.shape[0], c, h, w)
        res = restore.inpaint(model, x, mask, samples=args.samples, steps=args.steps, seed=args.seed)
        cols = [x, torch.where(mask, grey, x), res["map"]] + (list(res["samples"]) if args.samples else [])
        restored = res["map"]
        caption = "per row: input, masked (grey = missing), most likely completion" + \
            (f", {args.samples} random-start completions" if args.samples else "")
    else:
        if args.sigma is not None and not (math.isfinite(args.sigma) and args.sigma > 0):
            raise ValueError(f"--sigma must be a number > 0 (the noise std in pixel values 0..255), got {args.sigma}")
        if args.salt_pepper is not None and not 0 < args.salt_pepper < 1:
            raise ValueError(f"--salt-pepper must be in (0, 1) (the fraction of pixels hit), got {args.salt_pepper}")
        if args.images:
            noisy = x
        elif args.sigma is not None:
            noisy = restore.add_gaussian_noise(x, args.sigma, generator=g)
        else:
            noisy, _ = restore.add_salt_pepper(x, args.salt_pepper, generator=g)
        restored = restore.denoise(model, noisy, sigma=args.sigma, salt_pepper=args.salt_pepper is not None,
                                   steps=args.steps).cpu()
        med = restore.median_filter(noisy)
        cols = [x, noisy, med, restored] if not args.images else [noisy, med, restored]
        caption = ("per row: " + ("" if args.images else "clean, ") + "noisy, 3x3 median filter, model MAP")
        if not args.images:
            print(f"PSNR (dB, all pixels): noisy {restore.psnr(noisy, x):.2f}, median {restore.psnr(med, x):.2f}, "
                  f"model {restore.psnr(restored, x):.2f}")
    grid = torch.stack([col.cpu() for col in cols], 1).flatten(0, 1)
    out = Path(args.out) if args.out else run_dir / f"{args.command}.png"
    save_grid(grid, out, nrow=len(cols))
    if args.save_dir:
        _save_each(restored, names, args.save_dir, f"_{args.command}")
    print(f"{caption}\nwrote {out}")
    return 0
