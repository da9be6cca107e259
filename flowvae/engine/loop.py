"""The training loop and its separate pieces: the budget (when to stop, the planned step count),
logging, evaluation and checkpoints. :func:`run_loop` reads on one screen; train.py sets it up.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Optional

import torch

from ..checkpoint import CheckpointError, save_checkpoint
from ..data import iterate_batches
from ..errors import FlowVAEError
from ..runtime import Progress, _clock
from ..visualize import grid
from . import distributed as D
from .evaluate import evaluate
from .generate import reconstruct_grid, resample_level_grid, sample_images, swap_grid
from .schedule import get_lr, plan_due, plan_steps
from .step import Trainer, train_step

# A run stops when more than train.max_skip_fraction of its steps were skipped, judged from this many steps on.
SKIP_CHECK_AFTER = 10


class TrainingError(FlowVAEError, RuntimeError):
    """Training cannot usefully go on (e.g. most steps are skipped as non-finite)."""


class StuckRun(TrainingError):
    """Every step of a long streak was skipped: the weights sit where every batch fails, and skipped steps
    never move them. The checkpoint on disk is left as it is (periodic saves wait for an applied step),
    so it holds the weights from before the streak."""


@dataclasses.dataclass
class Counters:
    """Where the run is; saved in the checkpoint. They move only after an optimiser step, so they always
    match the weights."""
    step: int = 0                           # optimiser steps taken (skipped ones included)
    epoch: int = 0
    batch_in_epoch: int = 0                 # global batches of this epoch consumed
    skipped: int = 0
    train_seconds: float = 0.0              # time in training steps (not evaluation or checkpoints), over resumes
    planned_steps: Optional[int] = None     # the lr schedule's length (None: time-planned, in its warm-up)


@dataclasses.dataclass
class Run:
    """Everything set up for the loop (train.py builds it)."""
    cfg: object
    out: Path
    tr: Trainer
    c: Counters
    train_ds: object
    test_ds: object
    batches_per_epoch: int
    eval_images: int
    say: object = print
    guard: "SkipGuard" = None               # this process's skipped steps (set from the config)

    def __post_init__(self):
        self.guard = SkipGuard(self.cfg.train.max_skip_fraction, self.cfg.train.max_skipped_in_a_row)

    @property
    def t(self):
        return self.cfg.train

    @property
    def main(self) -> bool:
        return self.tr.info.is_main

    @property
    def eval_model(self):
        """What evaluation and images use: the EMA weights, or the trained weights (ema_decay 0)."""
        return self.tr.ema.weights(self.tr.model)


# ------------------------------------------------------------------------------------- the loop
def run_loop(run: Run, budget: "Budget", log: "Logger", ckpt: "Checkpointer", stop: "StopSignal") -> bool:
    """Train until the planned step count, the time budget or a stop request; True if stopped by a
    signal (Ctrl-C / SIGTERM on any rank)."""
    c, t = run.c, run.t
    batches = global_batches(run)
    save_due = False  # a periodic checkpoint waits for an applied step: a skipped one may mean broken weights
    while not budget.done():
        x = next(batches)
        budget.plan_if_due()
        tic = time.perf_counter()  # kl_weights: beta times the KL warm-up, per group if staged (objective.py)
        model = run.tr.model
        res = train_step(run.tr, x, c.step, budget.lr(c.step), model.objective.kl_weights(c.step, model.latents.groups),
                         flags=lambda: {"stop": stop.requested, "time": budget.out_of_time(tic)},
                         log_terms=log.due(c.step + 1))
        budget.count(time.perf_counter() - tic)
        c.step, c.batch_in_epoch, c.skipped = c.step + 1, c.batch_in_epoch + 1, c.skipped + (not res.applied)
        run.guard.count(res.applied, c.step, t.lr)
        log.step(res, x.shape[0] * run.tr.info.world_size, budget)
        if t.eval_every and c.step % t.eval_every == 0:
            log.evaluation(periodic_evaluation(run), run.eval_model)
        save_due = save_due or bool(t.checkpoint_every and c.step % t.checkpoint_every == 0)
        if save_due and res.applied:
            ckpt.save()
            save_due = False
        if res.flags["stop"] or res.flags["time"]:  # agreed by all ranks in the step's all-reduce
            return bool(res.flags["stop"])
    return False


def global_batches(run: Run):
    """This rank's share of each global batch from the run's (epoch, batch_in_epoch) on; the global
    batch sequence depends only on (seed, epoch) (distributed.py)."""
    c, t, info = run.c, run.t, run.tr.info
    while True:
        if c.batch_in_epoch >= run.batches_per_epoch:  # also a checkpoint taken on an epoch's last batch
            c.epoch, c.batch_in_epoch = c.epoch + 1, 0
        idx = D.rank_indices(len(run.train_ds), t.batch_size, t.seed, c.epoch, info.rank, info.world_size,
                             start_batch=c.batch_in_epoch)
        for x, _ in iterate_batches(run.train_ds, t.batch_size // info.world_size, indices=idx,
                                    workers=run.cfg.data.workers):
            yield x


class SkipGuard:
    """Stops a diverging run: more than ``max_fraction`` of this process's steps skipped as non-finite, or
    ``max_in_a_row`` steps in a row (0: never), which a long healthy start would otherwise hide for as
    many steps again."""

    def __init__(self, max_fraction: float, max_in_a_row: int = 0):
        self.max_fraction, self.max_in_a_row = max_fraction, max_in_a_row
        self.steps = self.skipped = self.in_a_row = 0

    def count(self, applied: bool, step: int, lr: float) -> None:
        self.steps += 1
        self.skipped += not applied
        self.in_a_row = 0 if applied else self.in_a_row + 1
        if self.max_in_a_row and self.in_a_row >= self.max_in_a_row:
            raise StuckRun(
                f"stopping at step {step}: the last {self.in_a_row} steps in a row (from step {step - self.in_a_row + 1}) "
                f"had a non-finite loss or gradient norm and were skipped (train.max_skipped_in_a_row="
                f"{self.max_in_a_row}); skipped steps do not change the weights, so this run is stuck. The "
                f"checkpoint was left as it was before the streak: continue it with --resume and a lower train.lr "
                f"(now {lr:g}) or train.grad_clip")
        if self.steps >= SKIP_CHECK_AFTER and self.skipped > self.max_fraction * self.steps:
            raise TrainingError(
                f"stopping at step {step}: {self.skipped} of this run's {self.steps} steps had a non-finite "
                f"loss or gradient norm and were skipped (more than train.max_skip_fraction={self.max_fraction:g}). "
                f"The model is diverging: lower train.lr (now {lr:g}), raise train.warmup_steps, or lower "
                f"model.coupling_clamp; the checkpoint keeps the last good weights")


# ------------------------------------------------------------------------------------- the budget
class Budget:
    """When the run stops, and the planned step count the lr follows (schedule.py). The planned count
    ends the run; ``train.max_minutes`` (time in training steps, over resumes) may end it earlier. With
    ``train.max_steps: 0`` the count is planned once, at the end of the warm-up, from the speed of the
    warm-up steps this process timed, and agreed over ranks (the smallest)."""

    def __init__(self, run: Run):
        self.run, self.t, self.c = run, run.t, run.c
        self.seconds = self.t.max_minutes * 60 if self.t.max_minutes > 0 else math.inf
        self.step_times: list[float] = []

    def lr(self, step: int) -> float:
        return get_lr(step, self.t, self.c.planned_steps)

    def done(self) -> bool:
        c = self.c
        return (c.planned_steps is not None and c.step >= c.planned_steps) or c.train_seconds >= self.seconds

    def out_of_time(self, tic: float) -> bool:
        """Whether the time budget runs out within the step that started at ``tic``."""
        return self.c.train_seconds + (time.perf_counter() - tic) >= self.seconds

    def count(self, seconds: float) -> None:
        self.c.train_seconds += seconds
        if self.c.planned_steps is None:
            self.step_times.append(seconds)

    def plan_if_due(self) -> None:
        c, info = self.c, self.run.tr.info
        if not plan_due(self.t, c.step, c.planned_steps):
            return
        times = self.step_times or ([c.train_seconds / c.step] if c.step else [])
        planned = plan_steps(c.step, c.train_seconds, self.seconds, times)
        if info.enabled:  # every rank follows the same schedule
            planned = int(D.all_reduce(torch.tensor([planned], dtype=torch.float64, device=info.device), info, "min").item())
        c.planned_steps = planned
        per_step = (self.seconds - c.train_seconds) / max(planned - c.step, 1)
        self.run.say(f"planned {planned} steps: the rest of train.max_minutes={self.t.max_minutes:g} at "
                     f"{per_step * 1000:.0f} ms/step, the speed of the warm-up (its last {len(times) - len(times) // 4} "
                     f"timed steps); the lr schedule runs over them, and --resume keeps this plan")

    def steps_left(self, per_step: float) -> float:
        """Steps the planned count and the time budget leave at ``per_step`` seconds a step."""
        left = (self.c.planned_steps - self.c.step) if self.c.planned_steps is not None else math.inf
        if math.isfinite(self.seconds) and per_step > 0:
            left = min(left, max(0, int((self.seconds - self.c.train_seconds) / per_step)))
        return left


# ------------------------------------------------------------------------------------- logging
class Logger:
    """TensorBoard scalars and images (rank 0), and the progress bar. Reads device values only on log
    steps (``train.log_every``, and the first step): one host sync there, none on other steps."""

    def __init__(self, run: Run, progress: bool):
        from torch.utils.tensorboard import SummaryWriter

        self.run, self.t = run, run.t
        self.writer = SummaryWriter(str(run.out / "tb")) if run.main else None
        self.bar = Progress(total=run.c.planned_steps, desc="train", unit="steps", enabled=progress and run.main,
                            bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| [{elapsed}{postfix}]",
                            initial=run.c.step)
        self.test_x = run.test_ds[torch.arange(min(len(run.test_ds), 36))][0].to(run.tr.info.device)
        self._new_window()

    def _new_window(self) -> None:
        self.w_loss = torch.zeros((), device=self.run.tr.info.device)
        self.w_applied = self.w_steps = self.w_images = 0
        self.w_seconds = self.run.c.train_seconds

    def due(self, step: int) -> bool:
        return step == 1 or step % self.t.log_every == 0

    def step(self, res, images: int, budget: Budget) -> None:
        """After each step: the bar moves; on log steps, the scalars and the bar's text."""
        c = self.run.c
        self.w_steps, self.w_images = self.w_steps + 1, self.w_images + images
        if res.applied:
            self.w_loss, self.w_applied = self.w_loss + res.loss, self.w_applied + 1
        if self.due(c.step):
            self._log(res, budget)
        self.bar.update(1)

    def _log(self, res, budget: Budget) -> None:
        run, c, info = self.run, self.run.c, self.run.tr.info
        seconds = max(c.train_seconds - self.w_seconds, 1e-9)  # the window's steps
        vals = torch.stack([res.loss, res.grad_norm.float(), self.w_loss / max(self.w_applied, 1),
                            *res.terms.values()]).double()
        loss, gnorm, window_bpd, *terms = D.all_reduce(vals, info, "mean").tolist()  # the log step's sync
        left = budget.steps_left(seconds / self.w_steps)
        self.bar.set_total(c.step + left if math.isfinite(left) else None)  # what the budget is expected to allow
        self.bar.set_postfix_str((f"bpd {window_bpd:.3f}" if self.w_applied else "bpd nan") +
                                 f", {self.w_images / seconds:.0f} img/s, ETA {_clock(left * seconds / self.w_steps)}"
                                 + (f", skipped {c.skipped}" if c.skipped else ""))
        if self.writer is not None:
            scalars = {"loss": loss, "grad_norm": gnorm, "lr": budget.lr(c.step - 1), "skipped_steps": c.skipped,
                       "images_per_sec": self.w_images / seconds, **dict(zip(res.terms, terms))}
            for term in run.tr.terms:
                scalars.update(term.scalars())
            if run.tr.scaler.is_enabled():
                scalars["loss_scale"] = run.tr.scaler.get_scale()
            for key, v in scalars.items():
                self.writer.add_scalar(f"train/{key}", v, c.step)
        self._new_window()

    def evaluation(self, res: dict, model) -> None:
        if self.writer is None:
            return
        step = self.run.c.step
        for key, v in res.items():
            if key in self.run.tr.logged or key.startswith("active_units"):
                self.writer.add_scalar(f"eval/{key}", v, step)
        log_images(self.writer, model, self.test_x, step)
        self.bar.write(f"step {step}: test elbo_bpd {res['elbo_bpd']:.4f} ({res['images']} images, {weights(self.t)})")

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


def weights(t) -> str:
    return "EMA weights" if t.ema_decay > 0 else "raw weights"


def log_images(writer, model, test_x: torch.Tensor, step: int) -> None:
    with eval_mode(model):
        writer.add_image("images/samples_t0.7", grid(sample_images(model, 36, 0.7), nrow=6), step)
        if model.hybrid:
            g, n = swap_grid(model, test_x[:6])
            writer.add_image("images/swap", grid(g, nrow=n), step)
            g, n = reconstruct_grid(model, test_x[:6], m=6)
            writer.add_image("images/reconstruct_resampled_z", grid(g, nrow=n), step)
        if model.hierarchical:  # what each level latent z_l controls
            for lvl in range(model.cfg.levels):
                g, n = resample_level_grid(model, test_x[:6], lvl, m=6)
                writer.add_image(f"images/resample_level{lvl}", grid(g, nrow=n), step)


class eval_mode:
    """``model.eval()`` for a block, then back to the mode it was in (the trained model itself is
    evaluated when there is no EMA copy)."""

    def __init__(self, model):
        self.model, self.was = model, model.training

    def __enter__(self):
        self.model.eval()
        return self.model

    def __exit__(self, *exc):
        self.model.train(self.was)


def periodic_evaluation(run: Run, progress: bool = False) -> dict:
    """The test bound (k=1) of the evaluated weights on ``train.eval_images`` images, sharded over ranks."""
    with eval_mode(run.eval_model) as model:
        return evaluate(model, run.test_ds, k=1, batch_size=run.cfg.eval.batch_size, limit=run.eval_images,
                        progress=progress, seed=run.t.seed, dist_info=run.tr.info)


# ------------------------------------------------------------------------------------- checkpoints
def checkpoint_state(run: Run) -> dict:
    """The checkpoint: the one place its contents are decided."""
    tr, c, dev = run.tr, run.c, run.tr.info.device
    return {
        "model": tr.model.state_dict(), "ema": tr.ema.state_dict(), "optimizer": tr.opt.state_dict(),
        "scaler": tr.scaler.state_dict() if tr.scaler.is_enabled() else None,
        "step": c.step, "epoch": c.epoch, "batch_in_epoch": c.batch_in_epoch, "skipped_steps": c.skipped,
        "train_seconds": c.train_seconds, "planned_steps": c.planned_steps, "config": run.cfg.to_dict(),
        "world_size": tr.info.world_size, "grad_accum": run.t.grad_accum, "precision": run.t.precision,
        **{term.name: term.state_dict() for term in tr.terms},
        "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
    }


class Checkpointer:
    """Writes ``<out>/checkpoint.pt`` (rank 0). When that fails (a full disk, a lost mount), the state goes
    to a fresh folder in the system's temporary directory instead, and the error says where and how to
    continue; with no copy anywhere it says which steps are lost rather than advising a --resume that
    would find nothing."""

    def __init__(self, run: Run):
        self.run = run
        self.path = run.out / "checkpoint.pt"
        self.saved_step: Optional[int] = run.c.step if self.path.is_file() else None
        self.written_step: Optional[int] = None

    def save(self) -> None:
        if not self.run.main or self.written_step == self.run.c.step:  # this process wrote this very step already
            return
        state = checkpoint_state(self.run)
        try:
            save_checkpoint(self.path, state)
        except CheckpointError as e:
            raise CheckpointError(f"{e}; {self._rescue(state)}") from None
        self.saved_step = self.written_step = self.run.c.step

    def _rescue(self, state: dict) -> str:
        step = self.run.c.step
        folder = None
        try:
            folder = Path(tempfile.mkdtemp(prefix="flowvae-rescue-"))
            save_checkpoint(folder / "checkpoint.pt", state)
            return (f"this run's state at step {step} was saved to {folder / 'checkpoint.pt'} instead: once there "
                    f"is space, move it to {self.path} and continue with flowvae train --out {self.run.out} --resume")
        except (OSError, CheckpointError):
            if folder is not None:
                shutil.rmtree(folder, ignore_errors=True)
        if self.saved_step is not None and self.path.is_file():
            return (f"--resume continues from step {self.saved_step}, the last checkpoint (the steps after it are "
                    f"lost)")
        return (f"no checkpoint of this run exists, so --resume cannot continue it: its {step} steps are lost; "
                f"free some space and start it again (train.checkpoint_every keeps periodic checkpoints)")


# ------------------------------------------------------------------------------------- signals
class StopSignal:
    """Ctrl-C (SIGINT) and SIGTERM finish the current step, then checkpoint and exit, so a checkpoint
    never holds half a step. A second Ctrl-C stops at once, without saving."""

    def __init__(self):
        self.requested = False
        self._old: dict = {}

    def __enter__(self):
        def handler(signum, frame):
            if self.requested and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self.requested = True
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, handler)
            except ValueError:  # not in the main thread: keep the default behaviour
                pass
        return self

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)

