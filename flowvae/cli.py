"""The ``flowvae`` command: one registered class per subcommand.

    flowvae train --config configs/quickstart.yaml --out runs/quick [key=value ...] [--resume]
    flowvae evaluate --checkpoint runs/quick --k 128
    flowvae sample --checkpoint pretrained:fashion_mnist --n 64 --out samples.png
    flowvae pretrained                      # the shipped models, their metrics and how each was trained
    flowvae COMMAND -h                      # everything else

How a command runs (``ModelCommand.run``): load the checkpoint, check every output path (writable, the
right kind, space left), check the arguments against the model (image sizes, test-set range, a global
code, the grid's memory), and only then do the work. An error the user can fix (every
``flowvae.errors.FlowVAEError``: ConfigError, CheckpointError, OutputError, UsageError, ...) is one
``error: ...`` line and exit code 2; ``--debug`` adds its traceback. Anything else is a bug and keeps its
traceback (exit code 1).

Adding a command: subclass ``Command`` (or ``ModelCommand`` for one that reads a checkpoint), give it a
``name``, ``help`` and ``description``, list the shared option groups it takes in ``options`` (see
``PARENTS``), declare its own options in ``add_arguments`` and decorate it with ``@register``::

    @register
    class Hello(Command):
        name = "hello"
        help = "print a greeting"
        description = "Print a greeting to the file given by --out."
        options = ("out",)
        out_help = "text file to write"

        def add_arguments(self, p):
            p.add_argument("--who", default="world", help="whom to greet (default: %(default)s)")

        def run(self, args) -> int:
            out = check_output(args.out or "hello.txt")
            out.write_text(f"hello, {args.who}\\n")
            return 0
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import math
import sys
import textwrap
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch

from .errors import FlowVAEError, UsageError
from .runtime import available_memory, check_output

# ============================================================================ argument types
def _count(minimum: int) -> Callable[[str], int]:
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


def _number(ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(v) and ok(v)):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return v
    return parse


TEMPERATURE = _number(lambda v: v >= 0, "a finite number >= 0 (0.7 is Glow's usual)")
FRACTION = _number(lambda v: 0 < v < 1, "in (0, 1)")


# ============================================================================ shared option groups
def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _common_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--debug", action="store_true",
                   help="on an error, show the full traceback (for a bug report) besides the one-line message")
    return p


def _checkpoint_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="a run directory, a checkpoint .pt file, or pretrained:NAME (flowvae pretrained lists them)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="data.*, eval.* and train.threads overrides of the checkpoint's config, before or after "
                        "the options (e.g. data.dataset=fashion_mnist_sample, train.threads=1); the model's own "
                        "settings cannot change")
    return p


def _device_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto, a GPU when there is one)")
    return p


def _seed_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws (default: %(default)s)")
    return p


def _out_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--out", metavar="PATH", help=cmd.out_help + "; checked for writability before any work")
    return p


def _test_image_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--n", type=POSITIVE, default=cmd.default_n, help="number of test images (default: %(default)s)")
    p.add_argument("--first", type=NON_NEGATIVE, default=0, help="index of the first test image (default: 0)")
    return p


def _image_file_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--images", metavar="PATH",
                   help="an image file or a folder of images (subfolders included) to use instead of the run's "
                        "test set; they must have the model's size (HxW), else they are refused unless --resize")
    p.add_argument("--resize", action="store_true",
                   help="resize --images of another size to the model's (bicubic), with a note saying how many")
    return p


def _classifier_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--classifier", metavar="PATH", help="the judge CNN's cache: loaded if the file exists, else trained "
                                                         "on the run's data and saved there")
    p.add_argument("--classifier-epochs", type=POSITIVE, default=3, help="epochs of the judge when it is trained "
                                                                         "(default: 3)")
    return p


def _labels_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--no-labels", action="store_true", help="no caption band above the grid")
    return p


def _progress_options(cmd: "Command") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    return p


# Each option is declared once, here; a command lists the groups it takes in ``Command.options``.
PARENTS: dict[str, Callable[["Command"], argparse.ArgumentParser]] = {
    "checkpoint": _checkpoint_options, "device": _device_options, "seed": _seed_options, "out": _out_options,
    "test_images": _test_image_options, "image_files": _image_file_options, "labels": _labels_options,
    "progress": _progress_options, "classifier": _classifier_options,
}


# ============================================================================ the registry
class Command:
    """One ``flowvae`` subcommand: its options and its work. Subclasses set the class attributes and
    ``run``; ``@register`` adds them to ``COMMANDS`` (the order of registration is the order in ``-h``)."""

    name: ClassVar[str] = ""
    help: ClassVar[str] = ""          # one line in ``flowvae -h``
    description: ClassVar[str] = ""   # the paragraph of ``flowvae NAME -h`` (and of the docs' CLI reference)
    options: ClassVar[tuple[str, ...]] = ()  # shared option groups (keys of PARENTS)
    out_help: ClassVar[str] = ""      # what --out is (with the "out" group)
    default_n: ClassVar[int] = 8      # --n's default (with the "test_images" group)

    def add_arguments(self, p: argparse.ArgumentParser) -> None:
        """The command's own options."""

    def run(self, args: argparse.Namespace) -> int:
        raise NotImplementedError


COMMANDS: dict[str, Command] = {}


def register(cls: type[Command]) -> type[Command]:
    if not cls.name or cls.name in COMMANDS:
        raise RuntimeError(f"command class {cls.__name__} needs a unique name, got {cls.name!r}")
    COMMANDS[cls.name] = cls()
    return cls


@dataclass
class Output:
    """A path a command will write, checked before the work: its option, and whether it is a folder."""
    option: str
    path: Path
    is_dir: bool = False
    suffix: Optional[str] = None  # the file type the writer needs (".png", ".csv", ".json")


@dataclass
class Job:
    """What a model command works on: its arguments, the loaded model and config, its run directory
    (default outputs), its checked outputs by option, and inputs prepared by ``check``."""
    args: argparse.Namespace
    model: Any
    cfg: Any
    run_dir: Path
    out: dict[str, Path] = field(default_factory=dict)
    inputs: dict[str, Any] = field(default_factory=dict)


class ModelCommand(Command):
    """A command that reads a checkpoint. ``run`` loads it, checks ``outputs``, refuses a flow-only model
    when ``needs_code``, runs ``check`` (arguments against the model; may prepare inputs) and the memory
    of the grid (``grid_images``), and only then calls ``work``."""

    options = ("checkpoint", "device", "seed", "out")
    output: ClassVar[str] = ""        # default output file in the run directory ("" = "<name>.png")
    needs_code: ClassVar[bool] = False  # refuse a flow-only (model.type=glow) model: it has no global code

    def outputs(self, job: Job) -> list[Output]:
        """The paths the work will write (default: --out, or ``output`` in the run directory)."""
        default = self.output or f"{self.name}.png"
        path = Path(job.args.out) if job.args.out else job.run_dir / default
        return [Output("--out", path, suffix=Path(default).suffix)]

    def check(self, job: Job) -> None:
        """Refuse arguments that cannot work with this model, before the work (UsageError), and prepare
        the inputs (by default the test images --first .. --first + --n - 1 as job.inputs["x"])."""
        if "test_images" in self.options:
            job.inputs["x"] = _test_images(job, job.args.first, job.args.n)

    def grid_images(self, job: Job) -> int:
        """How many image tiles the output grid holds (0: no grid)."""
        return 0

    def work(self, job: Job) -> None:
        raise NotImplementedError

    def run(self, args: argparse.Namespace) -> int:
        model, cfg = _load(args)
        job = Job(args, model, cfg, _run_dir(args.checkpoint))
        for o in self.outputs(job):
            if o.suffix and Path(o.path).suffix.lower() != o.suffix:
                raise UsageError(f"{o.option} {o.path}: must be a {o.suffix} file")
            job.out[o.option] = check_output(o.path, o.option, is_dir=o.is_dir)
        if self.needs_code and not model.hybrid:
            raise UsageError(f"{self.name} needs a global code z: this is a flow-only (model.type=glow) model, "
                             f"whose images have only the local code")
        self.check(job)
        check_grid_memory(self.grid_images(job), model.image_shape, self.grid_what(job))
        torch.manual_seed(args.seed)
        self.work(job)
        return 0

    def grid_what(self, job: Job) -> str:
        return f"{self.name} --n {job.args.n}" if "n" in vars(job.args) else self.name


# ============================================================================ helpers
def _run_dir(checkpoint: str) -> Path:
    """Where a command's default outputs go: the run directory (outputs of a shipped model go to
    runs/<name> in the working directory, never into the package)."""
    from .pretrained import PREFIX, is_pretrained

    if is_pretrained(checkpoint):
        return Path("runs") / checkpoint[len(PREFIX):].replace("/", "_")
    p = Path(checkpoint)
    return p if p.is_dir() else p.parent


def _load(args) -> tuple[Any, Any]:
    from .checkpoint import load_checkpoint
    from .config import apply_overrides
    from .runtime import apply_threads, resolve_device

    bad = [o for o in args.overrides if not (o.split("=", 1)[0].startswith(("data.", "eval."))
                                             or o.split("=", 1)[0] == "train.threads")]
    if bad:
        raise UsageError(f"{', '.join(bad)}: only data.*, eval.* and train.threads can be overridden for a trained model "
                         f"(its architecture and training are fixed by the checkpoint)")
    model, cfg, _ = load_checkpoint(args.checkpoint, device=resolve_device(args.device))
    cfg = apply_overrides(cfg, args.overrides)
    # train.threads says what the machine that trained the model could take, not what this one can: unless
    # given here, the auto setting (runtime.default_threads: one thread, the setting that holds up on a busy CPU)
    asked = any(o.split("=", 1)[0] == "train.threads" for o in args.overrides)
    apply_threads(cfg.train.threads if asked else 0)
    return model, cfg


def _test_images(job: Job, first: int, n: int) -> torch.Tensor:
    from .data import load_dataset

    ds = load_dataset(job.cfg.data, job.cfg.model, "test")
    if first + n > len(ds):
        raise UsageError(f"asked for test images {first}..{first + n - 1}, but the test set has {len(ds)} "
                         f"(indices 0..{len(ds) - 1}): lower --first or --n")
    return ds[torch.arange(first, first + n)][0].to(job.model.device)


def user_images(path: str, model, resize: bool):
    """A dataset of one image file or every image under a folder (subfolders included), in the model's
    channels. Images of another size than the model's are refused (naming them) unless ``resize``, which
    resizes them with a printed note: the rule of every ``--images`` option."""
    from .data import read_image_files

    return read_image_files(path, model.image_shape, resize=resize,
                            resize_hint="pass --resize to resize them, or give images of the model's size")


def check_grid_memory(images: int, image_shape: Sequence[int], what: str) -> None:
    """UsageError when a grid of ``images`` tiles would not fit in half the free memory (the tiles, their
    2x enlargement in float32 and the PNG canvas), naming the size and what fits."""
    if images <= 0:
        return
    c, h, w = image_shape
    s = max(1, 56 // h)  # visualize.save_grid's default enlargement
    per_image = c * h * w * (1 + 4 * s * s) + (h * s + 2) * (w * s + 2) * 3 * (4 + 1 + 1)
    budget = available_memory() // 2
    if images * per_image > budget:
        raise UsageError(f"{what} asks for a grid of {images:,} images of {c}x{h}x{w}: about "
                         f"{images * per_image / 2**30:,.1f} GiB to draw, more than half of the "
                         f"{2 * budget / 2**30:.1f} GiB of free memory; at most {budget // per_image:,} images fit here")


def classifier_output(job: Job) -> list[Output]:
    """--classifier (the "classifier" option group) is written when it does not exist yet: check it too."""
    return [Output("--classifier", Path(job.args.classifier))] if job.args.classifier else []


@contextlib.contextmanager
def user_input():
    """Around one call that validates a user-given input (a mask file, a reference model, a level name):
    its ValueError / TypeError describes that input, so it becomes a UsageError. Only for such calls: a
    ValueError anywhere else is a bug and keeps its traceback."""
    try:
        yield
    except FlowVAEError:
        raise
    except (ValueError, TypeError) as e:
        raise UsageError(str(e)) from e


def save_each(images: torch.Tensor, names: list[str], folder: Path, suffix: str) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for img, name in zip(images.cpu(), names):
        a = img.permute(1, 2, 0).numpy()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(folder / f"{name}{suffix}.png")


def _save_grid(job: Job, imgs: torch.Tensor, nrow: int, caption: Optional[list[str]]) -> None:
    from .visualize import save_grid

    out = job.out["--out"]
    save_grid(imgs.cpu(), out, nrow=nrow, caption=None if getattr(job.args, "no_labels", False) else caption)
    print(f"wrote {out}")


# ============================================================================ commands
@register
class Train(Command):
    name = "train"
    help = "train a model (one process; the same command under torchrun for several)"
    description = ("Train a model from a YAML config into a run directory: checkpoint.pt, config.yaml, TensorBoard "
                   "logs and metrics.\n\n"
                   "  flowvae train --config configs/quickstart.yaml --out runs/quick\n"
                   "  flowvae train --out runs/quick --resume train.max_steps=20000\n"
                   "  torchrun --standalone --nproc_per_node 2 -m flowvae train --config ... --out ...")
    options = ("device", "progress")

    def add_arguments(self, p):
        p.add_argument("--config", metavar="YAML", help="config file (configs/*.yaml); with --resume the run's saved "
                                                        "config is the default")
        p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory (checkpoint, TensorBoard logs, "
                                                                       "metrics); checked for writability first")
        p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
        p.add_argument("overrides", nargs="*", metavar="key=value",
                       help="config overrides, before or after the options, e.g. train.lr=5e-4 model.z_dim=32")

    def run(self, args) -> int:
        from .checkpoint import checkpoint_config, read_checkpoint
        from .config import apply_overrides, load_config
        from .engine.train import train

        check_output(args.out, "--out", is_dir=True)
        ckpt = Path(args.out) / "checkpoint.pt"
        if args.config is None and args.resume and ckpt.exists():
            cfg = apply_overrides(checkpoint_config(read_checkpoint(ckpt), ckpt), args.overrides)
        elif args.config is None:
            raise UsageError("train needs --config FILE (or --resume with an existing run in --out)")
        else:
            cfg = load_config(args.config, args.overrides)
        train(cfg, args.out, device=args.device, resume=args.resume, progress=not args.no_progress)
        return 0


def _report(job: "Job", res: dict, table: str) -> None:
    """A command's results: the JSON file named by --out, then the table and where the file went."""
    from .engine.evaluate import write_json

    write_json(res, job.out["--out"])
    print(table)
    print(f"written to {job.out['--out']}")


@register
class Evaluate(ModelCommand):
    name = "evaluate"
    help = "test-set elbo_bpd, iw{K}_bpd, each term of the bound and active units"
    description = ("The bound on the test (or train) split in bits/dim: elbo_bpd, the importance-weighted "
                   "iw{K}_bpd, each of its terms and the active units of the code. Under torchrun the images are "
                   "sharded over the processes and the results reduced.\n\n"
                   "  flowvae evaluate --checkpoint runs/quick --k 128\n"
                   "  torchrun --standalone --nproc_per_node 2 -m flowvae evaluate --checkpoint runs/quick")
    options = ModelCommand.options + ("progress",)
    out_help = "JSON file for the results (default: <run dir>/eval_k<K>.json)"

    def add_arguments(self, p):
        p.add_argument("--k", type=POSITIVE, default=None, help="importance samples (default: eval.k of the config)")
        p.add_argument("--split", default="test", choices=["test", "train"], help="which split (default: test)")
        p.add_argument("--limit", type=NON_NEGATIVE, default=None, help="only the first N images (default: eval.limit)")

    def _k(self, job: Job) -> int:
        return job.cfg.eval.k if job.args.k is None else job.args.k

    def outputs(self, job):
        out = Path(job.args.out) if job.args.out else job.run_dir / f"eval_k{self._k(job)}.json"
        return [Output("--out", out, suffix=".json")]

    def work(self, job):
        from .data import load_dataset
        from .engine import distributed as D
        from .engine.evaluate import evaluate, format_table

        args, cfg = job.args, job.cfg
        ds = load_dataset(cfg.data, cfg.model, args.split)
        info = D.setup(args.device)  # under torchrun: sharded over the ranks, reduced; else one process
        try:
            res = evaluate(job.model.to(info.device), ds, k=self._k(job), batch_size=cfg.eval.batch_size,
                           limit=cfg.eval.limit if args.limit is None else args.limit, seed=args.seed,
                           progress=info.is_main and not args.no_progress, dist_info=info)
        finally:
            D.teardown(info)
        if info.is_main:
            res.update(checkpoint=str(args.checkpoint), split=args.split, processes=info.world_size)
            _report(job, res, format_table(res))


@register
class Sample(ModelCommand):
    name = "sample"
    help = "a grid of samples"
    description = ("A grid of samples: the global code z drawn from its prior at --z-temperature, the local code "
                   "at --temperature (Glow's usual 0.7). Sizes that cannot fit in memory are refused up front.\n\n"
                   "  flowvae sample --checkpoint pretrained:fashion_mnist --n 64 --out samples.png")
    options = ModelCommand.options + ("labels",)
    out_help = "PNG file (default: <run dir>/sample.png)"

    def add_arguments(self, p):
        p.add_argument("--n", type=POSITIVE, default=64, help="number of samples (default: %(default)s)")
        p.add_argument("--temperature", type=TEMPERATURE, default=0.7,
                       help="temperature of the local code eps (default: %(default)s)")
        p.add_argument("--z-temperature", type=TEMPERATURE, default=1.0,
                       help="temperature of the global code z (default: %(default)s)")

    def grid_images(self, job):
        return job.args.n

    def work(self, job):
        from .engine import generate

        a = job.args
        imgs = generate.sample_images(job.model, a.n, a.temperature, a.z_temperature)
        caption = [f"{a.n} samples: local code at temperature {a.temperature:g}"
                   + (f", global code z at {a.z_temperature:g}" if job.model.hybrid else "")]
        _save_grid(job, imgs, max(1, int(round(a.n ** 0.5))), caption)


@register
class Swap(ModelCommand):
    name = "swap"
    help = "N x N grid: row i keeps image i's local code, column j takes image j's global code"
    description = ("The swap grid of --n test images: row i keeps image i's local code (eps), column j takes image "
                   "j's global code z; the diagonal is each image with its own codes. Needs a hybrid model.\n\n"
                   "  flowvae swap --checkpoint pretrained:fashion_mnist --n 8 --out swap.png")
    options = ModelCommand.options + ("test_images", "labels")
    out_help = "PNG file (default: <run dir>/swap.png)"
    needs_code = True

    def grid_images(self, job):
        return (job.args.n + 1) ** 2

    def work(self, job):
        from .engine import generate

        imgs, nrow = generate.swap_grid(job.model, job.inputs["x"])
        _save_grid(job, imgs, nrow, ["Swap: each row keeps the local code (eps) of the image in the left column; "
                                     "each column takes the global code z of the image in the top row. Diagonal: "
                                     "an image with its own codes."])


@register
class Reconstruct(ModelCommand):
    name = "reconstruct"
    help = "same local code, global code resampled from the prior"
    description = ("Per test image: the image, its reconstruction, then 7 decodes that keep its local code and draw "
                   "the global code from the prior: what changes is what z controls. Needs a hybrid model.")
    options = ModelCommand.options + ("test_images", "labels")
    out_help = "PNG file (default: <run dir>/reconstruct.png)"
    needs_code = True
    draws = 7

    def grid_images(self, job):
        return job.args.n * (self.draws + 2)

    def work(self, job):
        from .engine import generate

        imgs, nrow = generate.reconstruct_grid(job.model, job.inputs["x"], m=self.draws)
        _save_grid(job, imgs, nrow, ["Per row: a test image, its reconstruction, then the same local code (eps) "
                                     "with the global code z drawn from the prior: what changes is what z controls."])


@register
class Interpolate(ModelCommand):
    name = "interpolate"
    help = "interpolate z and eps between pairs of test images"
    description = ("For --pairs pairs of test images (a, b), rows from a to b in --steps steps: z moves with a's "
                   "local code; eps moves with a's z; both move (a flow-only model: the eps row only).")
    options = ModelCommand.options + ("labels",)
    out_help = "PNG file (default: <run dir>/interpolate.png)"

    def add_arguments(self, p):
        p.add_argument("--pairs", type=POSITIVE, default=4, help="pairs of test images (default: %(default)s)")
        p.add_argument("--steps", type=_count(2), default=10, help="images per row, ends included (default: %(default)s)")
        p.add_argument("--first", type=NON_NEGATIVE, default=0, help="index of the first test image (default: 0)")

    def check(self, job):
        job.inputs["x"] = _test_images(job, job.args.first, 2 * job.args.pairs)

    def grid_images(self, job):
        return job.args.pairs * 3 * job.args.steps

    def grid_what(self, job):
        return f"interpolate --pairs {job.args.pairs} --steps {job.args.steps}"

    def work(self, job):
        from .engine import generate

        a, x = job.args, job.inputs["x"]
        imgs, nrow = generate.interpolate_grid(job.model, x[: a.pairs], x[a.pairs :], a.steps)
        _save_grid(job, imgs, nrow, ["Per pair (a, b), three rows from a (left) to b (right): z moves with a's eps; "
                                     "eps moves with a's z; both move." if job.model.hybrid else
                                     "Per pair, the local code eps moves from a (left) to b (right)."])


@register
class ResampleLevel(ModelCommand):
    name = "resample-level"
    help = "re-draw one latent group (global z or a level's z_l), hold the rest"
    description = ("Per test image: the image, then --m images that re-draw one latent group from its prior and hold "
                   "every other group and the local code. --level all writes one grid per group.\n\n"
                   "  flowvae resample-level --checkpoint pretrained:fashion_mnist_hierarchical --level all")
    options = ModelCommand.options + ("test_images", "labels")
    out_help = ("PNG file for one level, or a directory for --level all (default: the run directory, "
                "resample_<group>.png)")
    needs_code = True
    default_n = 6

    def add_arguments(self, p):
        p.add_argument("--level", default="all", help="'global', a level index l (hierarchical models), or 'all' "
                                                      "(default: all)")
        p.add_argument("--m", type=POSITIVE, default=7, help="draws per image (columns after the original; default 7)")
        p.add_argument("--temperature", type=TEMPERATURE, default=1.0, help="prior temperature (default: 1.0)")

    def _groups(self, job: Job) -> list[str]:
        a, model = job.args, job.model
        if a.level == "all":
            return list(model.latent_groups())
        name = "global" if a.level == "global" else f"level{a.level}"
        with user_input():
            model.group_shape("global" if name == "global" else a.level)  # refuses a level the model lacks
        return [name]

    def outputs(self, job):
        a = job.args
        target = Path(a.out) if a.out else job.run_dir
        if a.out and a.level != "all":
            return [Output("--out", target, suffix=".png")]
        return [Output("--out", target, is_dir=True)]

    def check(self, job):
        job.inputs["groups"] = self._groups(job)
        super().check(job)

    def grid_images(self, job):
        return job.args.n * (job.args.m + 1)

    def work(self, job):
        from .engine import generate
        from .visualize import save_grid

        a, out, x = job.args, job.out["--out"], job.inputs["x"]
        for name in job.inputs["groups"]:
            level = "global" if name == "global" else int(name[len("level"):])
            imgs, nrow = generate.resample_level_grid(job.model, x, level, a.m, a.temperature, seed=a.seed)
            what = "the global code z" if name == "global" else f"the level-{level} latent z_{level}"
            path = out / f"resample_{name}.png" if out.suffix.lower() != ".png" else out
            save_grid(imgs.cpu(), path, nrow=nrow, caption=None if a.no_labels else [
                f"Per row: a test image, then {a.m} draws of {what} from its prior at temperature "
                f"{a.temperature:g}, with every other latent and the local code held (each column uses the same draw)."])
            print(f"wrote {path}")


@register
class Analyze(ModelCommand):
    name = "analyze"
    help = "decoupling analysis: swap consistency, linear probes, KL per latent group"
    description = ("How the model splits an image between its codes: swap consistency judged by a classifier "
                   "(trained once and cached with --classifier), linear probes of each code and the KL and active "
                   "units per latent group.")
    options = ModelCommand.options + ("classifier", "progress")
    out_help = "JSON file (default: <run dir>/analysis.json)"
    output = "analysis.json"

    def add_arguments(self, p):
        p.add_argument("--pairs", type=POSITIVE, default=1000, help="test pairs for swap consistency (default: 1000)")
        p.add_argument("--probe-train", type=POSITIVE, default=10000, help="training images for the linear probes")
        p.add_argument("--probe-test", type=POSITIVE, default=2000, help="test images for the probes")
        p.add_argument("--kl-images", type=POSITIVE, default=2000, help="test images for KL / active units per group")

    def outputs(self, job):
        return super().outputs(job) + classifier_output(job)

    def work(self, job):
        from .data import load_dataset
        from .engine.analyze import analyze, format_analysis

        a, cfg = job.args, job.cfg
        res = analyze(job.model, load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test"),
                      classifier=Path(a.classifier) if a.classifier else None, classifier_epochs=a.classifier_epochs,
                      pairs=a.pairs, probe_train=a.probe_train, probe_test=a.probe_test, kl_images=a.kl_images,
                      seed=a.seed, progress=not a.no_progress)
        res["checkpoint"] = str(a.checkpoint)
        _report(job, res, format_analysis(res))


@register
class Score(ModelCommand):
    name = "score"
    help = "per-image anomaly scores in bits/dim (higher = more anomalous) to a CSV file"
    description = ("Per-image scores in bits/dim, higher = more anomalous: bpd, its global/local parts (hybrids), "
                   "complexity_bpd and ic_bpd; with --reference also reference_bpd and the likelihood ratio lr_bpd.\n\n"
                   "  flowvae score --checkpoint runs/quick --out scores.csv\n"
                   "  flowvae score --checkpoint runs/quick --images my_folder/ --out scores.csv")
    options = ModelCommand.options + ("image_files", "progress")
    out_help = "CSV file (default: <run dir>/scores.csv)"
    output = "scores.csv"

    def add_arguments(self, p):
        p.add_argument("--split", default="test", choices=["test", "train"], help="the run's split to score, "
                                                                                 "without --images (default: test)")
        p.add_argument("--limit", type=NON_NEGATIVE, default=0, help="only the first N images (default: 0 = all)")
        p.add_argument("--k", type=POSITIVE, default=1, help="draws of (z, u) averaged in the bound (default: 1)")
        p.add_argument("--iw", type=NON_NEGATIVE, default=0, metavar="K",
                       help="also iw_bpd, the importance-weighted bound over K > 1 draws (evaluate's iwK_bpd): the "
                            "per-image score that least depends on the draw (default: 0 = off)")
        p.add_argument("--reference", metavar="CHECKPOINT",
                       help="a local background model (e.g. a model.type=glow model.coupling_kernels=[1,1] run on the "
                            "same data): adds reference_bpd and the likelihood ratio lr_bpd = bpd - reference_bpd")
        p.add_argument("--batch-size", type=POSITIVE, default=256, help="images per batch (default: 256)")

    def outputs(self, job):
        return [Output("--out", Path(job.args.out) if job.args.out else job.run_dir / self.output, suffix=".csv")]

    def check(self, job):
        from .checkpoint import load_checkpoint
        from .data import load_dataset
        from .uses.score import check_iw, check_reference

        a, model = job.args, job.model
        with user_input():
            check_iw(a.iw)
        if a.reference:
            job.inputs["reference"] = load_checkpoint(a.reference, device=model.device)[0]
            with user_input():
                check_reference(model, job.inputs["reference"])
        job.inputs["ds"] = (user_images(a.images, model, a.resize) if a.images
                            else load_dataset(job.cfg.data, job.cfg.model, a.split))

    def work(self, job):
        from .uses.score import score_dataset

        a, ds = job.args, job.inputs["ds"]
        scores, labels = score_dataset(job.model, ds, k=a.k, batch_size=a.batch_size, limit=a.limit, progress=not a.no_progress,
                                       reference=job.inputs.get("reference"), iw=a.iw)
        n = len(labels)
        source = [str(f) for f in ds.files[:n]] if a.images else [f"{a.split}{i}" for i in range(n)]
        with open(job.out["--out"], "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["index", "image", "label", *scores])
            for i in range(n):
                w.writerow([i, source[i], int(labels[i]), *(f"{float(v[i]):.5f}" for v in scores.values())])
        print(f"{n} images; mean scores (bits/dim, higher = more anomalous):")
        for key, v in scores.items():
            print(f"  {key:<15} {v.mean():.4f}")
        print(f"written to {job.out['--out']}")


class RestoreCommand(ModelCommand):
    """inpaint and denoise: --images or test images in, a grid and optionally each restored image out."""

    options = ModelCommand.options + ("test_images", "image_files")

    def add_arguments(self, p):
        p.add_argument("--steps", type=POSITIVE, default=200, help="optimisation steps (default: %(default)s)")
        p.add_argument("--save-dir", metavar="DIR", help="also write each restored image as a PNG here")

    def outputs(self, job):
        outs = super().outputs(job)
        if job.args.save_dir:
            outs.append(Output("--save-dir", Path(job.args.save_dir), is_dir=True))
        return outs

    def check(self, job):
        a = job.args
        if a.images:
            ds = user_images(a.images, job.model, a.resize)
            x, _ = ds[torch.arange(len(ds))]
            job.inputs.update(x=x, names=[Path(f).stem for f in ds.files])
        else:
            x = _test_images(job, a.first, a.n).cpu()
            job.inputs.update(x=x, names=[f"test{i}" for i in range(a.first, a.first + a.n)])

    def columns(self, job: Job) -> int:
        raise NotImplementedError

    def grid_images(self, job):
        return job.inputs["x"].shape[0] * self.columns(job)

    def grid_what(self, job):
        return f"{self.name} of {job.inputs['x'].shape[0]} images"

    def finish(self, job: Job, cols: list[torch.Tensor], restored: torch.Tensor, caption: str) -> None:
        from .visualize import save_grid

        grid = torch.stack([col.cpu() for col in cols], 1).flatten(0, 1)
        save_grid(grid, job.out["--out"], nrow=len(cols))
        if "--save-dir" in job.out:
            save_each(restored, job.inputs["names"], job.out["--save-dir"], f"_{self.name}")
        print(f"{caption}\nwrote {job.out['--out']}")


@register
class Inpaint(RestoreCommand):
    name = "inpaint"
    help = "fill masked pixels under the model's likelihood (observed pixels kept exactly)"
    description = ("Fill the masked pixels of test images (or --images) with the most likely completion under the "
                   "model, plus --samples random-start completions; observed pixels are kept exactly.\n\n"
                   "  flowvae inpaint --checkpoint runs/quick --mask bottom --n 8 --samples 3 --out inpaint.png")
    out_help = "PNG grid (default: <run dir>/inpaint.png)"

    def add_arguments(self, p):
        super().add_arguments(p)
        p.add_argument("--mask", default="bottom", help="bottom | centre | random | a mask file of the model's image "
                                                        "size: an image (nonzero = missing) or a .pt bool tensor "
                                                        "(default: bottom)")
        p.add_argument("--fraction", type=FRACTION, default=0.5, help="missing fraction of --mask random (default: 0.5)")
        p.add_argument("--samples", type=NON_NEGATIVE, default=3,
                       help="random-start completions besides the most likely one (default: 3)")

    def columns(self, job):
        return 3 + job.args.samples

    def check(self, job):
        from .uses import restore

        a, shape = job.args, job.model.image_shape
        if a.mask not in restore.BUILTIN_MASKS and not Path(a.mask).expanduser().is_file():
            raise UsageError(f"--mask {a.mask}: not one of bottom, centre, random, and no such mask file")
        super().check(job)
        n = job.inputs["x"].shape[0]
        if a.mask in restore.BUILTIN_MASKS:
            g = torch.Generator().manual_seed(a.seed)
            job.inputs["mask"] = restore.builtin_mask(a.mask, shape, n, a.fraction, generator=g)
        else:
            with user_input():
                job.inputs["mask"] = restore.load_mask(Path(a.mask).expanduser(), shape).expand(n, *shape)

    def work(self, job):
        from .uses import restore

        a, x, mask = job.args, job.inputs["x"], job.inputs["mask"]
        res = restore.inpaint(job.model, x, mask, samples=a.samples, steps=a.steps, seed=a.seed)
        cols = [x, torch.where(mask, torch.full_like(x, 128), x), res["map"]] + (list(res["samples"]) if a.samples else [])
        self.finish(job, cols, res["map"], "per row: input, masked (grey = missing), most likely completion"
                    + (f", {a.samples} random-start completions" if a.samples else ""))


@register
class Denoise(RestoreCommand):
    name = "denoise"
    help = "MAP denoising (Gaussian noise of std --sigma, or salt-and-pepper)"
    description = ("MAP denoising under the model, beside a 3x3 median filter. Noise is added to test images; "
                   "--images are taken as already noisy.\n\n"
                   "  flowvae denoise --checkpoint runs/quick --sigma 40 --n 8 --out denoise.png")
    out_help = "PNG grid (default: <run dir>/denoise.png)"

    def add_arguments(self, p):
        super().add_arguments(p)
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("--sigma", type=float, help="Gaussian noise std in pixel values 0..255, > 0")
        g.add_argument("--salt-pepper", type=FRACTION, metavar="AMOUNT",
                       help="salt-and-pepper noise: the fraction of pixels hit, in (0, 1)")

    def columns(self, job):
        return 3 if job.args.images else 4

    def check(self, job):
        sigma = job.args.sigma
        if sigma is not None and not (math.isfinite(sigma) and sigma > 0):
            raise UsageError(f"--sigma must be a number > 0 (the noise std in pixel values 0..255), got {sigma}")
        super().check(job)

    def work(self, job):
        from .uses import restore

        a, x = job.args, job.inputs["x"]
        g = torch.Generator().manual_seed(a.seed)
        if a.images:
            noisy = x
        elif a.sigma is not None:
            noisy = restore.add_gaussian_noise(x, a.sigma, generator=g)
        else:
            noisy, _ = restore.add_salt_pepper(x, a.salt_pepper, generator=g)
        restored = restore.denoise(job.model, noisy, sigma=a.sigma, salt_pepper=a.salt_pepper is not None,
                                   steps=a.steps).cpu()
        med = restore.median_filter(noisy)
        if not a.images:
            print(f"PSNR (dB, all pixels): noisy {restore.psnr(noisy, x):.2f}, median {restore.psnr(med, x):.2f}, "
                  f"model {restore.psnr(restored, x):.2f}")
        cols = [noisy, med, restored] if a.images else [x, noisy, med, restored]
        self.finish(job, cols, restored, "per row: " + ("" if a.images else "clean, ") + "noisy, 3x3 median filter, model MAP")


def _temperatures(text: str) -> list:
    return [TEMPERATURE(t) for t in text.split(",") if t.strip()] or [TEMPERATURE(text)]


@register
class Fid(ModelCommand):
    name = "fid"
    help = "Fréchet distance of samples to test images in the judge CNN's features, per temperature"
    description = ("The Fréchet distance between samples and test images in the features of the judge CNN (the "
                   "classifier of flowvae analyze), at each local-code temperature.\n\n"
                   "  flowvae fid --checkpoint runs/quick --classifier runs/classifier.pt --temperatures 0.5,0.7,1.0")
    options = ModelCommand.options + ("classifier", "progress")
    out_help = "JSON file (default: <run dir>/fid.json)"
    output = "fid.json"

    def add_arguments(self, p):
        p.add_argument("--temperatures", type=_temperatures, default=[0.5, 0.6, 0.7, 0.8, 0.9, 1.0],
                       help="comma-separated temperatures of the local code (default: 0.5,0.6,...,1.0)")
        p.add_argument("--n", type=NON_NEGATIVE, default=0, help="samples and test images per set (default: 0, the whole test set)")
        p.add_argument("--inception-weights", metavar="PATH", default=None,
                       help="the usual FID instead: the Inception v3 weights file (torch-fidelity's "
                            "pt_inception-2015-12-05 .pth); needs torch-fidelity; no judge is used")

    def outputs(self, job):
        return super().outputs(job) + ([] if job.args.inception_weights else classifier_output(job))

    def check(self, job):
        try:
            import torchmetrics  # noqa: F401  (an optional dependency)
        except ImportError:
            raise UsageError("flowvae fid needs torchmetrics: pip install torchmetrics") from None
        w = job.args.inception_weights
        if w is not None:
            if not Path(w).is_file():
                raise UsageError(f"--inception-weights {w}: no such file (the Inception v3 weights of the usual "
                                 f"FID, torch-fidelity's pt_inception-2015-12-05 .pth)")
            try:
                import torch_fidelity  # noqa: F401  (torchmetrics' Inception extractor comes from it)
            except ImportError:
                raise UsageError("the Inception FID needs torch-fidelity: pip install torch-fidelity") from None

    def work(self, job):
        from .data import load_dataset
        from .engine.analyze import load_or_train_classifier
        from .engine.fid import format_fid, sample_fid

        a, cfg = job.args, job.cfg
        test = load_dataset(cfg.data, cfg.model, "test")
        n = min(a.n, len(test)) if a.n else len(test)
        if a.inception_weights:
            res = sample_fid(job.model, test, None, a.temperatures, n, seed=a.seed, progress=not a.no_progress,
                             inception_weights=a.inception_weights)
            res.update(checkpoint=str(a.checkpoint), inception_weights=str(a.inception_weights))
            return _report(job, res, format_fid(res))
        clf = Path(a.classifier) if a.classifier else None
        train = load_dataset(cfg.data, cfg.model, "train") if clf is None or not clf.exists() else None
        judge, acc, how = load_or_train_classifier(clf, train, test, a.classifier_epochs, a.seed, not a.no_progress)
        res = sample_fid(job.model, test, judge, a.temperatures, n, seed=a.seed, progress=not a.no_progress)
        res.update(checkpoint=str(a.checkpoint), classifier=how, classifier_test_acc=acc)
        _report(job, res, format_fid(res))


@register
class Prepare(Command):
    name = "prepare"
    help = "decode an image folder once into a uint8 .npy array (train on it with data.dataset=array data.root=OUT)"
    description = ("Decode every image under --data once into one uint8 .npy array (labels too when there are class "
                   "subfolders), so training reads one array instead of many files.\n\n"
                   "  flowvae prepare --data my_images/ --out my_images.npy --size 64")
    options = ("progress",)

    def add_arguments(self, p):
        p.add_argument("--data", required=True, metavar="DIR", help="folder of images (class subfolders become labels)")
        p.add_argument("--out", required=True, metavar="NPY", help="the .npy file to write; checked before any work")
        p.add_argument("--size", type=POSITIVE, default=None, help="resize every image to SIZE x SIZE (bicubic)")
        p.add_argument("--channels", type=int, default=3, choices=[1, 3], help="1 (grey) or 3 (RGB; default)")
        p.add_argument("--center-crop", type=POSITIVE, default=None, help="centre square crop before resizing (CelebA: 148)")
        p.add_argument("--workers", type=NON_NEGATIVE, default=2, help="decoding processes (default: 2)")

    def run(self, args) -> int:
        from .data import prepare_folder

        out = check_output(args.out, "--out")
        res = prepare_folder(args.data, out, size=args.size, channels=args.channels, center_crop=args.center_crop,
                             workers=args.workers, progress=not args.no_progress)
        c, h, w = res["shape"]
        print(f"wrote {res['out']}: {res['images']} images of {c}x{h}x{w} uint8 ({res['bytes'] / 2**20:.1f} MB)"
              + (" and their labels" if res["labels"] else "") + f". Train on it with: data.dataset=array data.root={res['out']}")
        return 0


@register
class Pretrained(Command):
    name = "pretrained"
    help = "list the models shipped with flowvae, their metrics and how each was trained"
    description = ("The models shipped in the package, for --checkpoint pretrained:NAME: what each is for, its "
                   "test-set bound and swap consistency, and the command that trained it. With NAME, every metric "
                   "of that model.\n\n"
                   "  flowvae pretrained\n"
                   "  flowvae sample --checkpoint pretrained:fashion_mnist --out samples.png")

    def add_arguments(self, p):
        p.add_argument("model", nargs="?", metavar="NAME", help="show every stored metric of this model")

    def run(self, args) -> int:
        from .pretrained import PREFIX, RETIRED, available, info

        names = available()
        if args.model:
            name = args.model[len(PREFIX):] if args.model.startswith(PREFIX) else args.model
            if name not in names:
                why = RETIRED.get(name, f"available: {', '.join(names) or 'none'}")
                raise UsageError(f"no pretrained model {name!r} in this installation; {why}")
            names = [name]
        metas = {PREFIX + name: info(name) for name in names}
        print(pretrained_table(metas))
        for ref, meta in metas.items():
            print(f"\n{ref}\n  {meta.get('description', '')}\n  trained by: {meta.get('trained_by', '?')}")
            if args.model:
                for section in ("eval_full", "analysis"):
                    print("".join(f"\n  {section}.{key:<24} {value:.6g}" for key, value in meta.get(section, {}).items()
                                  if isinstance(value, (int, float)) and not isinstance(value, bool)))
        return 0


def pretrained_table(metas: dict[str, dict]) -> str:
    """One line per shipped model: its test-set bound, its swap consistency (how often a swapped image takes
    the class of its code's donor, judged by a classifier) and its training budget."""
    width = max(len(ref) for ref in metas) if metas else 10
    rows = [f"{'model':<{width}}  {'elbo_bpd':>8}  {'swap':>5}  {'steps':>7}  {'minutes':>7}"]
    for ref, meta in metas.items():
        bpd = meta.get("eval_full", {}).get("elbo_bpd")
        swap = meta.get("analysis", {}).get("swap_to_global_class")
        rows.append(f"{ref:<{width}}  {'?' if bpd is None else f'{bpd:.4f}':>8}  "
                    f"{'-' if swap is None else f'{swap:.2f}':>5}  {meta.get('step', '?'):>7,}  "
                    f"{meta.get('train_minutes', '?'):>7}")
    return "\n".join(rows) + "\n(elbo_bpd: negative ELBO on the full test set in bits/dim, lower is better; swap: share " \
        "of swapped images that take the class of the code donor, higher is better)"


# ============================================================================ parser and entry point
class _Formatter(argparse.HelpFormatter):
    """Descriptions: prose paragraphs are wrapped, indented lines (example commands) kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for para in text.split("\n\n"):
            if para.startswith("  "):
                paragraphs.append("\n".join(indent + line for line in para.splitlines()))
            else:
                paragraphs.append(textwrap.fill(" ".join(para.split()), width, initial_indent=indent,
                                                subsequent_indent=indent))
        return "\n\n".join(paragraphs)


def build_parser() -> argparse.ArgumentParser:
    """The full ``flowvae`` parser: one subparser per registered command, built from the shared option
    groups in PARENTS and the command's own ``add_arguments`` (the docs' CLI reference is generated from it)."""
    ap = argparse.ArgumentParser(
        prog="flowvae", formatter_class=_Formatter,
        description="Hybrid VAE / Glow image models in bits/dim: train, evaluate, generate, score and restore.",
        epilog="Exit codes: 0 done; 2 a problem with the input, config, files or options (one 'error:' line, "
               "found before any work where it can be; --debug adds the traceback); 1 a bug in flowvae "
               "(with its traceback); 130 interrupted.")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for cmd in COMMANDS.values():
        parents = [_common_options(cmd)] + [PARENTS[group](cmd) for group in cmd.options]
        p = sub.add_parser(cmd.name, help=cmd.help, description=cmd.description or cmd.help, parents=parents,
                           formatter_class=_Formatter)
        cmd.add_arguments(p)
    return ap


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parse a command line; ``key=value`` overrides may come before, between or after the options
    (``flowvae train --out R train.lr=1e-3 --no-progress``): the command's own parser parses intermixed
    arguments, which argparse cannot do through subparsers."""
    ap = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    subs = next(a for a in ap._actions if isinstance(a, argparse._SubParsersAction)).choices
    if argv and argv[0] in subs:
        args = subs[argv[0]].parse_intermixed_args(argv[1:])
        args.command = argv[0]
        return args
    return ap.parse_args(argv)  # -h, or an unknown command: argparse's own message


def _user_errors() -> tuple[type[BaseException], ...]:
    """FlowVAEError, plus the user-error classes defined outside flowvae.errors."""
    from .data import DataError
    from .engine.train import TrainingError

    return (FlowVAEError, DataError, TrainingError)


def _os_error_line(e: OSError) -> str:
    """An OSError that escaped the up-front checks (a disk filling up mid-run, a file removed meanwhile)."""
    from .runtime import describe_write_error

    if isinstance(e, FlowVAEError) or not e.errno:
        return str(e)
    where = f"{e.filename}: " if e.filename else ""
    return f"{where}{describe_write_error(e.filename, e) if e.filename else (e.strerror or e)}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run one command line; returns the exit code (0 done, 2 a user error, 130 interrupted). A bug
    (any other exception) propagates with its traceback."""
    try:
        args = parse_args(argv)
    except SystemExit as e:  # -h (0), or argparse's usage error (2), already printed
        return e.code if isinstance(e.code, int) else 2
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        # OSError: the file system, not flowvae (a disk filling up mid-run, a file removed meanwhile)
        if not isinstance(e, _user_errors() + (OSError,)):
            raise
        if args.debug:
            traceback.print_exc()
        print(f"error: {_os_error_line(e) if isinstance(e, OSError) else e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
