"""The ``flowvae`` command: train, evaluate, sample, swap, reconstruct, interpolate.

    flowvae train --config configs/quickstart.yaml --out runs/quick [key=value ...] [--resume]
    flowvae evaluate --checkpoint runs/quick --k 128 [--out runs/quick/eval.json]
    torchrun --standalone --nproc_per_node 2 -m flowvae evaluate --checkpoint runs/quick --k 128   # sharded
    flowvae sample --checkpoint runs/quick --n 64 --temperature 0.7 --out samples.png
    flowvae swap --checkpoint runs/quick --n 8 --out swap.png
    flowvae reconstruct --checkpoint runs/quick --n 8 --out reconstruct.png
    flowvae interpolate --checkpoint runs/quick --pairs 4 --steps 10 --out interpolate.png
    flowvae resample-level --checkpoint runs/hier --level all --n 6 --m 7     # one grid per latent group
    flowvae analyze --checkpoint runs/hier --classifier runs/classifier.pt   # swap consistency, probes, KL
    flowvae score --checkpoint runs/quick --out scores.csv [--images my_folder/]  # anomaly scores per image
    flowvae inpaint --checkpoint runs/quick --mask bottom --n 8 --samples 3 --out inpaint.png
    flowvae denoise --checkpoint runs/quick --sigma 40 --n 8 --out denoise.png   # or --salt-pepper 0.1

``--checkpoint`` takes a checkpoint file or a run directory. Trailing
``section.key=value`` items override the config (for commands reading a
checkpoint, only the data.* and eval.* sections can change).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch


def _count(minimum: int):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if v < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {v}")
        return v
    return parse


POSITIVE, NON_NEGATIVE = _count(1), _count(0)


def _common(p: argparse.ArgumentParser, out_help: str) -> None:
    p.add_argument("--out", required=False, help=out_help)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=5e-4")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="flowvae", description="Hybrid VAE / Glow image models in bits/dim.")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (one process; the same command under torchrun later)")
    p.add_argument("--config", help="YAML config (configs/*.yaml); with --resume the run's saved config is the default")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _common(p, "run directory (checkpoint, TensorBoard logs, metrics)")

    p = sub.add_parser("evaluate", help="test-set elbo_bpd, iw{K}_bpd, each term and active units")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--k", type=POSITIVE, default=None, help="importance samples (default eval.k of the config)")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=NON_NEGATIVE, default=None, help="only the first N images")
    p.add_argument("--seed", type=int, default=0)
    _common(p, "JSON file for the results (default: <run dir>/eval_k<K>.json)")

    p = sub.add_parser("sample", help="a grid of samples")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=POSITIVE, default=64)
    p.add_argument("--temperature", type=float, default=0.7, help="temperature of the local code eps")
    p.add_argument("--z-temperature", type=float, default=1.0, help="temperature of the global code z")
    p.add_argument("--seed", type=int, default=0)
    _common(p, "PNG file (default: <run dir>/samples.png)")

    for name, helptext in (("swap", "N x N grid: row i keeps image i's local code, column j takes image j's global code"),
                           ("reconstruct", "same local code, global code resampled from the prior")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--n", type=POSITIVE, default=8, help="number of test images")
        p.add_argument("--first", type=NON_NEGATIVE, default=0, help="index of the first test image")
        p.add_argument("--seed", type=int, default=0)
        _common(p, f"PNG file (default: <run dir>/{name}.png)")

    p = sub.add_parser("resample-level", help="re-draw one latent group (global z or a level's z_l), hold the rest")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--level", default="all", help="'global', a level index l (hierarchical models), or 'all' (default)")
    p.add_argument("--n", type=POSITIVE, default=6, help="number of test images (rows)")
    p.add_argument("--m", type=POSITIVE, default=7, help="draws per image (columns after the original)")
    p.add_argument("--first", type=NON_NEGATIVE, default=0, help="index of the first test image")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    _common(p, "PNG file for one level, or a directory for --level all (default: the run dir, "
               "resample_<group>.png)")

    p = sub.add_parser("analyze", help="decoupling analysis: swap consistency, linear probes, KL per latent group")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--classifier", help="classifier cache: loaded if it exists, else trained and saved there")
    p.add_argument("--classifier-epochs", type=POSITIVE, default=3)
    p.add_argument("--pairs", type=POSITIVE, default=1000, help="test pairs for swap consistency")
    p.add_argument("--probe-train", type=POSITIVE, default=10000, help="training images for the linear probes")
    p.add_argument("--probe-test", type=POSITIVE, default=2000, help="test images for the probes")
    p.add_argument("--kl-images", type=POSITIVE, default=2000, help="test images for KL / active units per group")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    _common(p, "JSON file (default: <run dir>/analysis.json)")

    p = sub.add_parser("score", help="per-image anomaly scores in bits/dim (higher = more anomalous) to a CSV file")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--images", help="score the images under this folder (or one image file) instead of the run's dataset")
    p.add_argument("--split", default="test", choices=["test", "train"])
    p.add_argument("--limit", type=NON_NEGATIVE, default=0, help="only the first N images (0 = all)")
    p.add_argument("--k", type=POSITIVE, default=1, help="draws of (z, u) averaged in the bound (default 1)")
    p.add_argument("--batch-size", type=POSITIVE, default=256)
    p.add_argument("--seed", type=int, default=0)
    _common(p, "CSV file (default: <run dir>/scores.csv)")

    for name, helptext in (("inpaint", "fill masked pixels under the model's likelihood (observed pixels kept exactly)"),
                           ("denoise", "MAP denoising (Gaussian noise of std --sigma, or salt-and-pepper)")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--images", help="image file or folder to restore (default: --n test images from --first)")
        p.add_argument("--n", type=POSITIVE, default=8, help="number of test images")
        p.add_argument("--first", type=NON_NEGATIVE, default=0, help="index of the first test image")
        p.add_argument("--steps", type=POSITIVE, default=200, help="optimisation steps")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--save-dir", help="also write each restored image as a PNG here")
        if name == "inpaint":
            p.add_argument("--mask", default="bottom", help="bottom | centre | random | a mask file (image, nonzero = "
                                                            "missing; or a .pt bool tensor) of the model's image size")
            p.add_argument("--fraction", type=float, default=0.5, help="missing fraction of --mask random")
            p.add_argument("--samples", type=NON_NEGATIVE, default=3, help="random-start completions besides the most likely one")
        else:
            g = p.add_mutually_exclusive_group(required=True)
            g.add_argument("--sigma", type=float, help="Gaussian noise std in pixel values 0..255")
            g.add_argument("--salt-pepper", type=float, metavar="AMOUNT",
                           help="salt-and-pepper noise: the fraction of pixels hit (added to test images; with --images "
                                "the images are taken as already noisy)")
        _common(p, f"PNG grid (default: <run dir>/{name}.png)")

    p = sub.add_parser("interpolate", help="interpolate z and eps between pairs of test images")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--pairs", type=POSITIVE, default=4)
    p.add_argument("--steps", type=_count(2), default=10)
    p.add_argument("--first", type=NON_NEGATIVE, default=0)
    _common(p, "PNG file (default: <run dir>/interpolate.png)")
    return ap


def _run_dir(checkpoint: str) -> Path:
    p = Path(checkpoint)
    return p if p.is_dir() else p.parent


def _load(args):
    from .config import apply_overrides
    from .checkpoint import load_checkpoint
    from .engine.train import resolve_device

    model, cfg, state = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    bad = [o for o in args.overrides if not o.split("=", 1)[0].startswith(("data.", "eval."))]
    if bad:
        raise SystemExit(f"error: {', '.join(bad)}: only data.* and eval.* can be overridden for a trained model")
    cfg = apply_overrides(cfg, args.overrides)
    return model, cfg


def _test_images(cfg, model, first: int, n: int) -> torch.Tensor:
    from .data import load_dataset

    ds = load_dataset(cfg.data, cfg.model, "test")
    if first + n > len(ds):
        raise SystemExit(f"error: asked for test images {first}..{first + n - 1}, the test set has {len(ds)}")
    return ds[torch.arange(first, first + n)][0].to(model.device)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    from .config import ConfigError, load_config
    from .checkpoint import CheckpointError
    from .data import DataError

    try:
        return _dispatch(args)
    except (ConfigError, CheckpointError, DataError, FileNotFoundError, FileExistsError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from .config import load_config
    from .visualize import save_grid

    if args.command == "train":
        from .engine.train import train
        from .checkpoint import read_checkpoint

        if not args.out:
            raise ValueError("train needs --out RUN_DIR")
        cfg_path = args.config
        if cfg_path is None and args.resume and (Path(args.out) / "checkpoint.pt").exists():
            from .config import apply_overrides, config_from_dict

            cfg = apply_overrides(config_from_dict(read_checkpoint(Path(args.out) / "checkpoint.pt")["config"]), args.overrides)
        elif cfg_path is None:
            raise ValueError("train needs --config FILE (or --resume with an existing run in --out)")
        else:
            cfg = load_config(cfg_path, args.overrides)
        train(cfg, args.out, device=args.device, resume=args.resume, progress=not args.no_progress)
        return 0

    model, cfg = _load(args)
    run_dir = _run_dir(args.checkpoint)
    if args.command == "evaluate":
        from .data import load_dataset
        from .engine.evaluate import evaluate, format_table, write_json

        from .engine import distributed as D

        k = cfg.eval.k if args.k is None else args.k
        limit = cfg.eval.limit if args.limit is None else args.limit
        ds = load_dataset(cfg.data, cfg.model, args.split)
        info = D.setup(args.device)  # under torchrun: sharded over the ranks, reduced; else one process
        try:
            res = evaluate(model.to(info.device), ds, k=k, batch_size=cfg.eval.batch_size, limit=limit,
                           seed=args.seed, progress=info.is_main, dist_info=info)
        finally:
            D.teardown(info)
        if not info.is_main:
            return 0
        res["checkpoint"] = str(args.checkpoint)
        res["split"] = args.split
        res["processes"] = info.world_size
        out = Path(args.out) if args.out else run_dir / f"eval_k{k}.json"
        write_json(res, out)
        print(format_table(res))
        print(f"written to {out}")
        return 0

    if args.command == "analyze":
        from .data import load_dataset
        from .engine.analyze import analyze, format_analysis
        from .engine.evaluate import write_json

        res = analyze(model, load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test"),
                      classifier=Path(args.classifier) if args.classifier else None,
                      classifier_epochs=args.classifier_epochs, pairs=args.pairs, probe_train=args.probe_train,
                      probe_test=args.probe_test, kl_images=args.kl_images, seed=args.seed,
                      progress=not args.no_progress)
        res["checkpoint"] = str(args.checkpoint)
        out = Path(args.out) if args.out else run_dir / "analysis.json"
        write_json(res, out)
        print(format_analysis(res))
        print(f"written to {out}")
        return 0

    if args.command in ("score", "inpaint", "denoise"):
        from .engine.cli_uses import run_use

        return run_use(args, model, cfg, run_dir)

    if hasattr(args, "seed"):
        torch.manual_seed(args.seed)
    from .engine import generate

    if args.command == "resample-level":
        groups = list(model.latent_groups()) if model.hybrid else []
        if not groups:
            raise ValueError("resample-level needs latent codes: this is a flow-only (model.type=glow) model")
        names = groups if args.level == "all" else ["global" if args.level == "global" else f"level{args.level}"]
        for name in names:
            model.group_shape("global" if name == "global" else name[len("level"):])  # validates the level
        x = _test_images(cfg, model, args.first, args.n)
        target = Path(args.out) if args.out else run_dir
        for name in names:
            level = "global" if name == "global" else int(name[len("level"):])
            imgs, nrow = generate.resample_level_grid(model, x, level, args.m, args.temperature, seed=args.seed)
            out = target / f"resample_{name}.png" if args.level == "all" or not args.out else target
            save_grid(imgs.cpu(), out, nrow=nrow)
            print(f"wrote {out}")
        return 0

    if args.command == "sample":
        imgs = generate.sample_images(model, args.n, args.temperature, args.z_temperature)
        nrow = max(1, int(round(args.n ** 0.5)))
    elif args.command == "swap":
        imgs, nrow = generate.swap_grid(model, _test_images(cfg, model, args.first, args.n))
    elif args.command == "reconstruct":
        imgs, nrow = generate.reconstruct_grid(model, _test_images(cfg, model, args.first, args.n))
    else:  # interpolate
        x = _test_images(cfg, model, args.first, 2 * args.pairs)
        imgs, nrow = generate.interpolate_grid(model, x[: args.pairs], x[args.pairs :], args.steps)
    out = Path(args.out) if args.out else run_dir / f"{args.command}.png"
    save_grid(imgs.cpu(), out, nrow=nrow)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
