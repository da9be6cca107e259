"""The training engine behind ``flowvae train`` (and scripts/train.py).

    flowvae train --config configs/quickstart.yaml --out runs/quick
    flowvae train --config configs/fashion_mnist.yaml --out runs/fm train.max_minutes=25
    flowvae train --out runs/fm --resume          # continue the same run from runs/fm/checkpoint.pt

One loop: data-dependent ActNorm init on one large batch, Adamax/AdamW with
linear warm-up, gradient clipping, non-finite steps skipped and counted, EMA
weights (used for evaluation, images and the final metrics), checkpoints every
``train.checkpoint_every`` steps, at the end and on Ctrl-C / SIGTERM, TensorBoard
logs under ``<out>/tb``. The wall-clock budget ``train.max_minutes`` counts
time spent in training steps only (not periodic evaluation or checkpoints) and
carries across resumes, so two models can be compared at equal compute.
"""
from __future__ import annotations

import copy
import math
import signal
import time
from pathlib import Path
from typing import Optional

import torch
import yaml
from tqdm import tqdm

from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import Config, config_from_dict
from ..data import iterate_batches, load_dataset
from ..model import FlowVAE
from ..visualize import grid
from .evaluate import evaluate, write_json
from .generate import reconstruct_grid, sample_images, swap_grid

LOGGED = ("elbo_bpd", "flow_bpd", "kl_bpd", "dequant_bpd", "kl_nats")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


class EMA:
    """Exponential moving average of the parameters (buffers are copied). The decay ramps up as
    min(decay, (1 + n) / (10 + n)) over the n updates so far, so short runs are not dominated by the init."""

    def __init__(self, model: torch.nn.Module, decay: float, updates: int = 0):
        self.model = copy.deepcopy(model).eval()
        self.decay = decay
        self.updates = updates
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        ema_p = list(self.model.parameters())
        torch._foreach_lerp_(ema_p, [p.detach() for p in model.parameters()], 1.0 - decay)
        for b_ema, b in zip(self.model.buffers(), model.buffers()):
            b_ema.copy_(b)


def build_optimizer(cfg: Config, model: torch.nn.Module):
    t = cfg.train
    if t.optimizer == "adamax":
        opt = torch.optim.Adamax(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    warm = max(1, t.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    return opt, sched


class _Stop:
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


def _log_images(writer, model: FlowVAE, test_x: torch.Tensor, step: int) -> None:
    writer.add_image("images/samples_t0.7", grid(sample_images(model, 36, 0.7), nrow=6), step)
    if model.hybrid:
        g, n = swap_grid(model, test_x[:6])
        writer.add_image("images/swap", grid(g, nrow=n), step)
        g, n = reconstruct_grid(model, test_x[:6], m=6)
        writer.add_image("images/reconstruct_resampled_z", grid(g, nrow=n), step)


def train(cfg: Config, out: str | Path, device: str = "auto", resume: bool = False, progress: bool = True) -> dict:
    """Train (or, with ``resume``, continue) a run in ``out``; returns the final evaluation."""
    threads = torch.get_num_threads()
    try:
        return _train(cfg, Path(out), device, resume, progress)
    finally:
        torch.set_num_threads(threads)  # train.threads must not leak into the caller's process


def _train(cfg: Config, out: Path, device: str, resume: bool, progress: bool) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    ckpt_path = out / "checkpoint.pt"
    state: Optional[dict] = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a run (checkpoint.pt). Pass --resume to continue it, "
                                  f"or choose another --out.")
        state = read_checkpoint(ckpt_path)
        saved = config_from_dict(state["config"])
        # These decide the weights' shapes, the optimiser state or the data order: changing them mid-run
        # would silently repeat or skip data, or fail later. lr, warm-up, budgets and logging may change.
        fixed = {"model": (saved.model, cfg.model), "data": (saved.data, cfg.data),
                 "train.batch_size": (saved.train.batch_size, cfg.train.batch_size),
                 "train.seed": (saved.train.seed, cfg.train.seed),
                 "train.optimizer": (saved.train.optimizer, cfg.train.optimizer)}
        changed = [k for k, (a, b) in fixed.items() if a != b]
        if changed:
            raise ValueError(f"--resume: {', '.join(changed)} differ from the run in {out}; resume without --config "
                             f"(the run's saved config is used), override only other train.* keys, or start a new run")
    t = cfg.train
    dev = resolve_device(device)
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    train_ds = load_dataset(cfg.data, cfg.model, "train")
    test_ds = load_dataset(cfg.data, cfg.model, "test")
    batches_per_epoch = len(train_ds) // t.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"train.batch_size={t.batch_size} is larger than the training set ({len(train_ds)} images)")

    model = FlowVAE.from_config(cfg.model).to(dev)
    opt, sched = build_optimizer(cfg, model)
    step, epoch, batch_in_epoch, skipped, train_seconds = 0, 0, 0, 0, 0.0
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        # The loaded state carries the old lr / weight decay; apply this config's (overrides on resume work).
        sched.base_lrs = [t.lr for _ in opt.param_groups]
        for g in opt.param_groups:
            g["initial_lr"], g["weight_decay"] = t.lr, t.weight_decay
            g["lr"] = t.lr * sched.lr_lambdas[0](sched.last_epoch)
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        skipped, train_seconds = state["skipped_steps"], state["train_seconds"]
        torch.set_rng_state(state["rng"]["cpu"])
        if dev.type == "cuda" and state["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(state["rng"]["cuda"], dev)
        ema = EMA(model, t.ema_decay, updates=step - skipped)
        ema.model.load_state_dict(state["ema"])
        print(f"resumed {ckpt_path} at step {step} (epoch {epoch}, {train_seconds / 60:.1f} min trained)")
    else:
        g = torch.Generator().manual_seed(t.seed)
        init_idx = torch.randperm(len(train_ds), generator=g)[: t.init_batch_size]
        model.initialize(train_ds[init_idx][0].to(dev))
        ema = EMA(model, t.ema_decay)

    def checkpoint() -> None:
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "skipped_steps": skipped, "train_seconds": train_seconds, "config": cfg.to_dict(),
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
        })

    budget = t.max_minutes * 60 if t.max_minutes > 0 else math.inf
    writer = SummaryWriter(str(out / "tb"))
    test_x = test_ds[torch.arange(min(len(test_ds), 36))][0].to(dev)
    window = {"images": 0, "seconds": 0.0}
    # With a wall-clock budget the bar counts budget seconds (its ETA is then the real end), else steps.
    timed = math.isfinite(budget)
    bar = tqdm(total=round(budget) if timed else t.max_steps, initial=round(train_seconds) if timed else step,
               desc="train", unit="s" if timed else "step", disable=not progress, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]" if timed else None)
    model.train()
    with _Stop() as stop:
        try:
            while step < t.max_steps and train_seconds < budget and not stop.requested:
                for x, _ in iterate_batches(train_ds, t.batch_size, shuffle=True, seed=t.seed, epoch=epoch,
                                            drop_last=True, start_batch=batch_in_epoch, workers=cfg.data.workers):
                    tic = time.perf_counter()
                    out_d = model.loss(x.to(dev, non_blocking=True))
                    loss = out_d["loss"]
                    opt.zero_grad(set_to_none=True)
                    finite = bool(torch.isfinite(loss))
                    gnorm = torch.tensor(float("nan"))
                    if finite:
                        loss.backward()
                        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                        finite = bool(torch.isfinite(gnorm))
                    if finite:
                        opt.step()
                        sched.step()
                        ema.update(model)
                    else:
                        skipped += 1
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    dt = time.perf_counter() - tic
                    train_seconds += dt
                    window["images"] += x.shape[0]
                    window["seconds"] += dt
                    step += 1
                    batch_in_epoch += 1
                    bar.update(min(dt, budget - bar.n) if timed else 1)
                    if step % t.log_every == 0 or step == 1:
                        bpd = out_d["elbo_bpd"].mean().item()
                        bar.set_postfix(step=step, bpd=f"{bpd:.3f}", skipped=skipped)
                        for key in LOGGED:
                            writer.add_scalar(f"train/{key}", out_d[key].mean().item(), step)
                        writer.add_scalar("train/loss", loss.item(), step)
                        writer.add_scalar("train/grad_norm", gnorm.item(), step)
                        writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
                        writer.add_scalar("train/skipped_steps", skipped, step)
                        writer.add_scalar("train/images_per_sec", window["images"] / max(window["seconds"], 1e-9), step)
                        window = {"images": 0, "seconds": 0.0}
                    if t.eval_every and step % t.eval_every == 0:
                        res = evaluate(ema.model, test_ds, k=1, batch_size=cfg.eval.batch_size, limit=t.eval_images,
                                       progress=False, seed=None)
                        for key, v in res.items():
                            if key in LOGGED or key == "active_units":
                                writer.add_scalar(f"eval/{key}", v, step)
                        _log_images(writer, ema.model, test_x, step)
                        tqdm.write(f"step {step}: test elbo_bpd {res['elbo_bpd']:.4f} ({res['images']} images, EMA)")
                    if t.checkpoint_every and step % t.checkpoint_every == 0:
                        checkpoint()
                    if step >= t.max_steps or train_seconds >= budget or stop.requested:
                        break
                else:
                    epoch += 1
                    batch_in_epoch = 0
        except KeyboardInterrupt:  # a second Ctrl-C: the step in flight may be half done, so do not save it
            bar.close()
            writer.close()
            print(f"stopped at once by a second Ctrl-C; {ckpt_path} holds the last periodic checkpoint")
            raise
        except Exception:
            # A crash mid-run (a corrupt file read lazily, out of memory, ...) keeps the last finished step.
            bar.close()
            writer.close()
            checkpoint()
            print(f"training failed at step {step}; checkpoint saved to {ckpt_path} (continue with --resume)")
            raise
        bar.close()
        checkpoint()
        if stop.requested:
            writer.close()
            print(f"interrupted at step {step}: checkpoint saved to {ckpt_path}; continue with --resume")
            return {"interrupted": True, "step": step}

    res = evaluate(ema.model, test_ds, k=1, batch_size=cfg.eval.batch_size, limit=t.eval_images, progress=progress)
    res.update(step=step, epochs=round(step / batches_per_epoch, 3), skipped_steps=skipped,
               train_minutes=round(train_seconds / 60, 2))
    for key in LOGGED:
        writer.add_scalar(f"eval/{key}", res[key], step)
    _log_images(writer, ema.model, test_x, step)
    writer.close()
    write_json(res, out / "train_metrics.json")
    print(f"done: step {step}, {train_seconds / 60:.1f} min training, test elbo_bpd {res['elbo_bpd']:.4f} "
          f"on {res['images']} images (EMA); checkpoint {ckpt_path}")
    return res
