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
    flowvae score --checkpoint runs/quick --reference runs/local --out scores.csv  # + lr_bpd vs a local flow
    flowvae inpaint --checkpoint runs/quick --mask bottom --n 8 --samples 3 --out inpaint.png
    flowvae denoise --checkpoint runs/quick --sigma 40 --n 8 --out denoise.png   # or --salt-pepper 0.1
    flowvae fid --checkpoint runs/quick --classifier runs/classifier.pt --temperatures 0.5,0.7,1.0 --n 10000

``--checkpoint`` takes a checkpoint file or a run directory. ``section.key=value``
items override the config, before or after the options (for commands reading a
checkpoint, only the data.* and eval.* sections can change). Every output path is
checked for writability before the work starts; errors are one line, never a traceback.
"""
from __future__ import annotations

import argparse
import math
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


def TEMPERATURE(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(v) or v < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0 (0.7 is Glow's usual), got {text}")
    return v


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
    p.add_argument("--temperature", type=TEMPERATURE, default=0.7, help="temperature of the local code eps (default 0.7)")
    p.add_argument("--z-temperature", type=TEMPERATURE, default=1.0, help="temperature of the global code z")
    p.add_argument("--no-labels", action="store_true", help="no caption band above the grid")
    p.add_argument("--seed", type=int, default=0)
    _common(p, "PNG file (default: <run dir>/samples.png)")

    for name, helptext in (("swap", "N x N grid: row i keeps image i's local code, column j takes image j's global code"),
                           ("reconstruct", "same local code, global code resampled from the prior")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--checkpoint", required=True)
        p.add_argument("--n", type=POSITIVE, default=8, help="number of test images")
        p.add_argument("--first", type=NON_NEGATIVE, default=0, help="index of the first test image")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--no-labels", action="store_true", help="no caption band above the grid")
        _common(p, f"PNG file (default: <run dir>/{name}.png)")

    p = sub.add_parser("resample-level", help="re-draw one latent group (global z or a level's z_l), hold the rest")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--level", default="all", help="'global', a level index l (hierarchical models), or 'all' (default)")
    p.add_argument("--n", type=POSITIVE, default=6, help="number of test images (rows)")
    p.add_argument("--m", type=POSITIVE, default=7, help="draws per image (columns after the original)")
    p.add_argument("--first", type=NON_NEGATIVE, default=0, help="index of the first test image")
    p.add_argument("--temperature", type=TEMPERATURE, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-labels", action="store_true", help="no caption band above the grids")
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
    p.add_argument("--reference", metavar="CHECKPOINT",
                   help="a local background model (e.g. a model.type=glow model.coupling_kernels=[1,1] run on the same "
                        "data): adds reference_bpd and the likelihood ratio lr_bpd = bpd - reference_bpd")
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
    p.add_argument("--no-labels", action="store_true", help="no caption band above the grid")
    _common(p, "PNG file (default: <run dir>/interpolate.png)")
    add_fid_command(sub)
    return ap


def add_fid_command(sub) -> None:
    """``flowvae fid``: the Fréchet distance of samples to test images in the judge CNN's features
    (engine/fid.py). Self-contained: its parser names its handler, which ``_dispatch`` calls."""
    def temperatures(text: str) -> list:
        return [TEMPERATURE(t) for t in text.split(",") if t.strip()] or [TEMPERATURE(text)]

    def run(args, model, cfg, run_dir) -> int:
        from .data import load_dataset
        from .engine.analyze import load_or_train_classifier
        from .engine.evaluate import write_json
        from .engine.fid import format_fid, sample_fid
        from .runtime import check_output

        out = check_output(Path(args.out) if args.out else run_dir / "fid.json")
        clf_path = Path(check_output(args.classifier, "--classifier")) if args.classifier else None
        test = load_dataset(cfg.data, cfg.model, "test")
        train = load_dataset(cfg.data, cfg.model, "train") if clf_path is None or not clf_path.exists() else None
        judge, acc, how = load_or_train_classifier(clf_path, train, test, args.classifier_epochs, args.seed,
                                                   not args.no_progress)
        n = min(args.n, len(test)) if args.n else len(test)
        try:
            res = sample_fid(model, test, judge, args.temperatures, n, seed=args.seed, progress=not args.no_progress)
        except ImportError as e:  # torchmetrics, an optional dependency
            print(f"error: {e}", file=sys.stderr)
            return 2
        res.update(checkpoint=str(args.checkpoint), classifier=how, classifier_test_acc=acc)
        write_json(res, out)
        print(format_fid(res))
        print(f"written to {out}")
        return 0

    p = sub.add_parser("fid", help="Fréchet distance of samples to test images in the judge CNN's features, per temperature")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--classifier", help="the judge (flowvae analyze's classifier cache): loaded if it exists, else trained and saved there")
    p.add_argument("--classifier-epochs", type=POSITIVE, default=3)
    p.add_argument("--temperatures", type=temperatures, default=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                   help="comma-separated temperatures of the local code (default 0.5,0.6,...,1.0)")
    p.add_argument("--n", type=NON_NEGATIVE, default=0, help="samples and test images per set (default 0: the whole test set)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-progress", action="store_true")
    _common(p, "JSON file (default: <run dir>/fid.json)")
    p.set_defaults(handler=run)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Like ``parse_args``, but overrides may come before, between or after options
    (``flowvae train --out R train.lr=1e-3 --no-progress``): the command's own parser parses intermixed
    arguments (argparse cannot do that through subparsers)."""
    ap = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    subs = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in subs:
        args = subs[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return ap.parse_args(argv)  # -h, or an unknown command: argparse's own message


def _run_dir(checkpoint: str) -> Path:
    from .pretrained import PREFIX, is_pretrained

    if is_pretrained(checkpoint):  # outputs of a shipped model go to the working directory, not into the package
        return Path("runs") / checkpoint[len(PREFIX):].replace("/", "_")
    p = Path(checkpoint)
    return p if p.is_dir() else p.parent


def _load(args):
    from .config import apply_overrides
    from .checkpoint import load_checkpoint
    from .runtime import resolve_device

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
    args = parse_args(argv)
    from .config import ConfigError
    from .checkpoint import CheckpointError
    from .data import DataError
    from .engine.train import TrainingError

    try:
        return _dispatch(args)
    except (ConfigError, CheckpointError, DataError, TrainingError, FileNotFoundError, FileExistsError,
            ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # file problems the checks up front could not foresee (disk full mid-run, ...)
        from .runtime import OutputError, describe_write_error

        if isinstance(e, OutputError) or not e.errno:
            print(f"error: {e}", file=sys.stderr)
        else:
            where = f"{e.filename}: " if e.filename else ""
            print(f"error: {where}{describe_write_error(e.filename or '.', e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    from .config import load_config
    from .runtime import apply_threads, check_output
    from .visualize import save_grid

    if args.command == "train":
        from .engine.train import train
        from .checkpoint import checkpoint_config, read_checkpoint

        if not args.out:
            raise ValueError("train needs --out RUN_DIR")
        check_output(args.out, "--out", is_dir=True)
        cfg_path = args.config
        ckpt = Path(args.out) / "checkpoint.pt"
        if cfg_path is None and args.resume and ckpt.exists():
            from .config import apply_overrides

            cfg = apply_overrides(checkpoint_config(read_checkpoint(ckpt), ckpt), args.overrides)
        elif cfg_path is None:
            raise ValueError("train needs --config FILE (or --resume with an existing run in --out)")
        else:
            cfg = load_config(cfg_path, args.overrides)
        train(cfg, args.out, device=args.device, resume=args.resume, progress=not args.no_progress)
        return 0

    model, cfg = _load(args)
    apply_threads(cfg.train.threads)  # the same thread policy as training (README, "A busy machine")
    run_dir = _run_dir(args.checkpoint)
    if getattr(args, "handler", None) is not None:  # a command that carries its own handler (fid)
        return args.handler(args, model, cfg, run_dir)
    if args.command == "evaluate":
        from .data import load_dataset
        from .engine.evaluate import evaluate, format_table, write_json

        from .engine import distributed as D

        k = cfg.eval.k if args.k is None else args.k
        limit = cfg.eval.limit if args.limit is None else args.limit
        out = check_output(Path(args.out) if args.out else run_dir / f"eval_k{k}.json")
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
        write_json(res, out)
        print(format_table(res))
        print(f"written to {out}")
        return 0

    if args.command == "analyze":
        from .data import load_dataset
        from .engine.analyze import analyze, format_analysis
        from .engine.evaluate import write_json

        out = check_output(Path(args.out) if args.out else run_dir / "analysis.json")
        if args.classifier:
            check_output(args.classifier, "--classifier")
        res = analyze(model, load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test"),
                      classifier=Path(args.classifier) if args.classifier else None,
                      classifier_epochs=args.classifier_epochs, pairs=args.pairs, probe_train=args.probe_train,
                      probe_test=args.probe_test, kl_images=args.kl_images, seed=args.seed,
                      progress=not args.no_progress)
        res["checkpoint"] = str(args.checkpoint)
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
        target = Path(args.out) if args.out else run_dir
        outs = {name: (target / f"resample_{name}.png" if args.level == "all" or not args.out else target) for name in names}
        for out in outs.values():
            check_output(out)
        x = _test_images(cfg, model, args.first, args.n)
        for name in names:
            level = "global" if name == "global" else int(name[len("level"):])
            imgs, nrow = generate.resample_level_grid(model, x, level, args.m, args.temperature, seed=args.seed)
            what = "the global code z" if name == "global" else f"the level-{level} latent z_{level}"
            caption = None if args.no_labels else [
                f"Per row: a test image, then {args.m} draws of {what} from its prior at temperature "
                f"{args.temperature:g}, with every other latent and the local code held (each column uses the same draw)."]
            save_grid(imgs.cpu(), outs[name], nrow=nrow, caption=caption)
            print(f"wrote {outs[name]}")
        return 0

    out = check_output(Path(args.out) if args.out else run_dir / f"{args.command}.png")
    if args.command == "sample":
        imgs = generate.sample_images(model, args.n, args.temperature, args.z_temperature)
        nrow = max(1, int(round(args.n ** 0.5)))
        caption = [f"{args.n} samples: local code at temperature {args.temperature:g}"
                   + (f", global code z at {args.z_temperature:g}" if model.hybrid else "")]
    elif args.command == "swap":
        imgs, nrow = generate.swap_grid(model, _test_images(cfg, model, args.first, args.n))
        caption = ["Swap: each row keeps the local code (eps) of the image in the left column; each column takes "
                   "the global code z of the image in the top row. Diagonal: an image with its own codes."]
    elif args.command == "reconstruct":
        imgs, nrow = generate.reconstruct_grid(model, _test_images(cfg, model, args.first, args.n))
        caption = ["Per row: a test image, its reconstruction, then the same local code (eps) with the global "
                   "code z drawn from the prior: what changes is what z controls."]
    else:  # interpolate
        x = _test_images(cfg, model, args.first, 2 * args.pairs)
        imgs, nrow = generate.interpolate_grid(model, x[: args.pairs], x[args.pairs :], args.steps)
        caption = [("Per pair (a, b), three rows from a (left) to b (right): z moves with a's eps; eps moves "
                    "with a's z; both move." if model.hybrid else "Per pair, the local code eps moves from a (left) to b (right).")]
    save_grid(imgs.cpu(), out, nrow=nrow, caption=None if args.no_labels else caption)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
