"""The training engine behind ``flowvae train`` : one process, or many under torchrun.

    flowvae train --config configs/quickstart.yaml --out runs/quick
    flowvae train --config configs/fashion_mnist.yaml --out runs/fm train.max_minutes=25
    flowvae train --out runs/fm --resume          # continue the same run from runs/fm/checkpoint.pt

    # the same command under torchrun: one node, 4 GPUs (NCCL) or 4 CPU processes (gloo)
    torchrun --standalone --nproc_per_node 4 -m flowvae train --config configs/fashion_mnist.yaml --out runs/fm
    # two nodes (run on each; runs/fm on a shared file system); --max-restarts resumes after a lost worker
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 --rdzv-id fm \\
        --max-restarts 3 -m flowvae train --config configs/fashion_mnist.yaml --out runs/fm --resume
    # mixed precision and gradient accumulation (the global batch stays train.batch_size)
    flowvae train --config configs/fashion_mnist.yaml --out runs/fm train.precision=bf16 train.grad_accum=2

One loop: data-dependent ActNorm init on one large batch, Adamax/AdamW with
linear warm-up, gradient clipping, non-finite steps skipped and counted, EMA
weights (used for evaluation, images and the final metrics), checkpoints every
``train.checkpoint_every`` steps, at the end and on Ctrl-C / SIGTERM, TensorBoard
logs under ``<out>/tb``. The wall-clock budget ``train.max_minutes`` counts
time spent in training steps only (not periodic evaluation or checkpoints) and
carries across resumes, so two models can be compared at equal compute.

Under torchrun (``WORLD_SIZE`` > 1; see distributed.py) the model is wrapped in
DistributedDataParallel, NCCL on CUDA (device ``cuda:LOCAL_RANK``) and gloo on CPU:

* ``train.batch_size`` is the global batch: each optimiser step sees ``batch_size`` images, split
  into ``world_size x train.grad_accum`` equal micro-batches; gradients are all-reduced once per step
  (``no_sync`` on all but the last micro-batch). The global batch sequence depends only on
  (seed, epoch), so a run may resume with a different number of processes.
* Every rank builds the same model from the same seed, runs the same data-dependent init on the
  same batch, then rank 0's parameters and buffers are broadcast before DDP wraps the model.
* Each micro-batch draws its noise (dequantisation, z) from a generator seeded by (seed, step,
  global micro-batch index), so ranks draw different noise, a resumed run draws what an uninterrupted
  one would, and 2 processes compute what 1 process with ``grad_accum=2`` computes.
* Non-finite losses or gradient norms: a flag is max-reduced over ranks, so all ranks skip together;
  a Ctrl-C / SIGTERM on any rank and the wall-clock budget (the max over ranks of each step's time)
  are agreed the same way, so every rank stops after the same step.
* Only rank 0 logs, shows progress and writes checkpoints (unwrapped weights, no ``module.``
  prefixes); logged training metrics are means over ranks; evaluation is sharded over ranks and
  reduced (evaluate.py).

``train.precision``: ``fp32`` | ``bf16`` | ``fp16`` runs the forward pass under autocast: coupling
networks and the encoder in reduced precision, while the 1x1 convolutions, priors, log-determinants,
KL and loss stay float32 (see flows/base.py). fp16 uses a gradient scaler.

``train.memory``: ``standard`` | ``recompute`` | ``checkpoint``: how the flow steps' activations are kept
for the backward pass (flows/recompute.py). ``recompute`` rebuilds them from the outputs through the
invertible layers, so training memory stays flat in the number of steps.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import dataclasses
import inspect
import math
import signal
import time
from pathlib import Path
from typing import Optional

import torch
import yaml
from torch import nn

from ..checkpoint import (CheckpointError, checkpoint_config, read_checkpoint, save_checkpoint, upgrade_optimizer_state,
                          upgrade_state_dict)
from ..config import Config
from ..data import iterate_batches, load_dataset
from ..model import FlowVAE
from ..visualize import grid
from . import distributed as D
from .evaluate import evaluate, model_terms, write_json
from .generate import reconstruct_grid, resample_level_grid, sample_images, swap_grid
from ..runtime import (PRECISIONS, Progress, _clock, apply_threads, autocast_context, check_output,  # noqa: F401
                       resolve_device)  # resolve_device, autocast_context, PRECISIONS: re-exported

DDP_ARGS = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters


class TrainingError(RuntimeError):
    """Training cannot usefully go on (e.g. most steps are skipped as non-finite)."""


# Model-section keys that only weight the training loss, so a resumed run may change them.

# A run stops when more than train.max_skip_fraction of its steps were skipped, judged from this many steps on.
SKIP_CHECK_AFTER = 10


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
        # A loop of public lerp_ calls: 0.2 ms per step slower than the private torch._foreach_lerp_ on the
        # Fashion-MNIST hybrid (229 tensors, one CPU thread), under 0.1% of a training step.
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p.detach(), 1.0 - decay)
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


def lr_factor(t, step: int, seconds: float) -> float:
    """``train.lr_schedule``'s factor on the warmed-up lr at ``step``: 1 (constant), or (cosine) a half cosine
    from 1 to 0 over the run, whose length is whichever of train.max_steps and train.max_minutes ends it
    first. With a wall-clock budget the lr thus reaches 0 when the budget does, however fast the machine."""
    if t.lr_schedule == "constant":
        return 1.0
    frac = step / t.max_steps
    if t.max_minutes > 0:
        frac = max(frac, seconds / (t.max_minutes * 60))
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, frac)))


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


class _LossModule(nn.Module):
    """What DDP wraps: its forward is the model's training loss (DDP hooks need a forward call)."""

    def __init__(self, model: FlowVAE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, kl_weight: Optional[float] = None) -> dict:
        return self.model.loss(x, kl_weight)


def _log_images(writer, model: FlowVAE, test_x: torch.Tensor, step: int) -> None:
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


def _summary(cfg: Config, out: Path, model: FlowVAE, n_train: int, n_test: int, data_name: str, dev: torch.device,
             threads: int, world: int, resume: bool) -> None:
    """One block at the start: what is trained on what, where, and where the results go."""
    t, m = cfg.train, cfg.model
    params = sum(p.numel() for p in model.parameters())
    kind = "flow-only Glow" if m.type == "glow" else f"hybrid (VAE + conditional Glow, {m.injection} injection)"
    how = {0: "auto", -1: "torch's default"}.get(t.threads, f"train.threads={t.threads}")
    where = f"{dev}" + (f", {threads} CPU thread{'s' if threads != 1 else ''} ({how})" if dev.type == "cpu" else "")
    budget = f"{t.max_steps} steps" + (f" or {t.max_minutes:g} min of training steps (whichever first)" if t.max_minutes > 0 else "")
    every = f", every {t.checkpoint_every} steps" if t.checkpoint_every else ""
    c, h, w = model.image_shape
    print("\n".join([
        f"flowvae train ({'resuming' if resume else 'new run'}): {kind}, {params:,} parameters, {m.levels} levels x {m.steps} steps",
        f"  data        {data_name}: {n_train:,} train / {n_test:,} test images ({c}x{h}x{w}, {m.n_bits}-bit)",
        f"  device      {where}{f', {world} processes' if world > 1 else ''}",
        f"  precision   {t.precision}, batch {t.batch_size}, lr {t.lr:g}, budget {budget}",
        f"  checkpoint  {out / 'checkpoint.pt'}{every} (continue with --resume)",
        f"  tensorboard tensorboard --logdir {out / 'tb'}",
    ]), flush=True)


def _show_progress(bar: Progress, recent, step: int, max_steps: int, seconds_left: float, skipped: int) -> None:
    """Steps, the running bpd of the last steps, images/s and the ETA (whichever budget ends first)."""
    losses = [b for b, _, _ in recent if b is not None]
    seconds = sum(s for _, _, s in recent)
    per_step = seconds / max(len(recent), 1)
    steps_left = max_steps - step
    if math.isfinite(seconds_left) and per_step > 0:
        steps_left = min(steps_left, max(0, int(seconds_left / per_step)))
        bar.set_total(step + steps_left)
    text = (f"bpd {sum(losses) / len(losses):.3f}" if losses else "bpd nan") + \
        f", {sum(n for _, n, _ in recent) / max(seconds, 1e-9):.0f} img/s, ETA {_clock(steps_left * per_step)}"
    bar.set_postfix_str(text + (f", skipped {skipped}" if skipped else ""))
    bar.update(1)


def train(cfg: Config, out: str | Path, device: str = "auto", resume: bool = False, progress: bool = True) -> dict:
    """Train (or, with ``resume``, continue) a run in ``out``; returns the final evaluation (on every rank).
    Under torchrun, or inside a process group the caller initialised, this process is one rank of a
    data-parallel run (see the module docstring)."""
    threads = torch.get_num_threads()
    info = D.setup(device)
    try:
        return _train(cfg, Path(out), info, resume, progress)
    finally:
        D.teardown(info)
        torch.set_num_threads(threads)  # train.threads must not leak into the caller's process


def _train(cfg: Config, out: Path, info: D.DistInfo, resume: bool, progress: bool) -> dict:
    from torch.utils.tensorboard import SummaryWriter

    main = info.is_main
    say = print if main else (lambda *a, **k: None)
    ckpt_path = out / "checkpoint.pt"
    state: Optional[dict] = None
    if ckpt_path.exists():
        if not resume:
            raise FileExistsError(f"{out} already holds a run (checkpoint.pt). Pass --resume to continue it, "
                                  f"or choose another --out.")
        state = read_checkpoint(ckpt_path)
        saved = checkpoint_config(state, ckpt_path)
        # These decide the weights' shapes, the optimiser state or the data order: changing them mid-run
        # would silently repeat or skip data, or fail later. lr, warm-up, budgets, logging, precision,
        # grad_accum and the number of processes may change.
        # The whole loss: section may change: it shapes the gradient, not the weights or the reported bound.
        # model.coupling_impl only picks how the same weights are computed: it may change too (CPU -> GPU).
        fixed = {"model": (dataclasses.replace(saved.model, coupling_impl=cfg.model.coupling_impl), cfg.model),
                 "data": (saved.data, cfg.data),
                 "train.batch_size": (saved.train.batch_size, cfg.train.batch_size),
                 "train.seed": (saved.train.seed, cfg.train.seed),
                 "train.optimizer": (saved.train.optimizer, cfg.train.optimizer)}
        changed = [k for k, (a, b) in fixed.items() if a != b]
        if changed:
            raise ValueError(f"--resume: {', '.join(changed)} differ from the run in {out}; resume without --config "
                             f"(the run's saved config is used), override only other train.* keys, or start a new run")
    t = cfg.train
    dev, world, rank = info.device, info.world_size, info.rank
    micro = D.micro_batch_size(t.batch_size, world, t.grad_accum)
    if t.precision == "fp16" and dev.type == "cpu":
        say("note: train.precision=fp16 on CPU runs (torch autocast supports it) but is usually slower than fp32; "
            "bf16 is the reduced precision CPUs accelerate")
    threads = apply_threads(t.threads)
    torch.manual_seed(t.seed)
    if main:
        check_output(out, "--out", is_dir=True)  # before loading data or building the model
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    train_ds = load_dataset(cfg.data, cfg.model, "train")
    test_ds = load_dataset(cfg.data, cfg.model, "test")
    batches_per_epoch = len(train_ds) // t.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"train.batch_size={t.batch_size} is larger than the training set ({len(train_ds)} images)")
    if t.init_batch_size > len(train_ds):
        say(f"note: train.init_batch_size={t.init_batch_size} is larger than the training set; the data-dependent "
            f"init uses all {len(train_ds)} images")
    eval_images = min(t.eval_images, len(test_ds)) if t.eval_images else len(test_ds)
    if t.eval_images > len(test_ds):
        say(f"note: train.eval_images={t.eval_images} is larger than the test set; evaluating on all {len(test_ds)} images")

    model = FlowVAE.from_config(cfg).to(dev)  # with cfg.loss: the objective (objective.py) it trains under
    model.glow.set_memory(t.memory)  # the EMA copy evaluates without a graph: it needs no setting
    logged = model_terms(model)  # the bound's terms, plus each latent group's KL for a hierarchical model
    opt, sched = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=t.precision == "fp16")
    step, epoch, batch_in_epoch, skipped, train_seconds = 0, 0, 0, 0, 0.0
    tc = None
    if cfg.loss.tc_weight > 0:  # Factor-VAE: its discriminator trains alongside, outside the reported bound
        from ..tc import TCPenalty
        tc = TCPenalty(cfg.model.z_dim, cfg.loss.tc_weight, dev)
    if state is not None:
        model.load_state_dict(upgrade_state_dict(state["model"], cfg.model))
        opt.load_state_dict(upgrade_optimizer_state(state["optimizer"], state["model"], model))
        sched.load_state_dict(state["scheduler"])
        # The loaded state carries the old lr / weight decay; apply this config's (overrides on resume work).
        sched.base_lrs = [t.lr for _ in opt.param_groups]
        for g in opt.param_groups:
            g["initial_lr"], g["weight_decay"] = t.lr, t.weight_decay
            g["lr"] = t.lr * sched.lr_lambdas[0](sched.last_epoch) * lr_factor(t, state["step"], state["train_seconds"])
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        skipped, train_seconds = state["skipped_steps"], state["train_seconds"]
        if tc is not None and state.get("tc") is not None:
            tc.load_state_dict(state["tc"])
        D.broadcast_module(model, info)
        ema = EMA(model, t.ema_decay, updates=step - skipped)
        ema.model.load_state_dict(upgrade_state_dict(state["ema"], cfg.model))
        was = state.get("world_size", 1)
        say(f"resumed {ckpt_path} at step {step} (epoch {epoch}, {train_seconds / 60:.1f} min trained)"
            + (f"; it ran on {was} process(es), now {world}" if was != world else ""))
    else:
        # Every rank initialises from the same batch and the same random state; rank 0's result is then
        # broadcast, so all ranks hold bitwise identical weights before the first step.
        g = torch.Generator().manual_seed(t.seed)
        init_idx = torch.randperm(len(train_ds), generator=g)[: t.init_batch_size]
        model.initialize(train_ds[init_idx][0].to(dev))
        D.broadcast_module(model, info)
        ema = EMA(model, t.ema_decay)

    if info.enabled:
        # Buffers (LU permutations, masks, init flags) never change after the broadcast above: no per-step sync.
        no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in DDP_ARGS
                          else {"broadcast_buffers": False})
        ddp = torch.nn.parallel.DistributedDataParallel(
            _LossModule(model), device_ids=[dev.index] if dev.type == "cuda" else None,
            gradient_as_bucket_view=True, **no_buffer_sync)
        run_loss = ddp
    else:
        ddp = None
        run_loss = model.loss

    def checkpoint() -> None:
        if not main:
            return
        save_checkpoint(ckpt_path, {
            "model": model.state_dict(), "ema": ema.model.state_dict(), "optimizer": opt.state_dict(),
            "scheduler": sched.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "step": step, "epoch": epoch, "batch_in_epoch": batch_in_epoch,
            "skipped_steps": skipped, "train_seconds": train_seconds, "config": cfg.to_dict(),
            "world_size": world, "grad_accum": t.grad_accum, "precision": t.precision,
            "tc": tc.state_dict() if tc is not None else None,
            "rng": {"cpu": torch.get_rng_state(), "cuda": torch.cuda.get_rng_state(dev) if dev.type == "cuda" else None},
        })

    budget = t.max_minutes * 60 if t.max_minutes > 0 else math.inf
    weights = "EMA weights" if t.ema_decay > 0 else "raw weights"  # what evaluation scores
    if main:
        _summary(cfg, out, model, len(train_ds), len(test_ds), getattr(train_ds, "name", cfg.data.dataset), dev,
                 threads, world, resume=state is not None)
    if step >= t.max_steps or train_seconds >= budget:
        used = (f"train.max_minutes={t.max_minutes:g}: {train_seconds / 60:.1f} min trained" if train_seconds >= budget
                else f"train.max_steps={t.max_steps}")
        more = (f"train.max_minutes={2 * t.max_minutes:g}" if train_seconds >= budget else f"train.max_steps={2 * t.max_steps}")
        say(f"this run has already used its budget ({used}, step {step}): nothing to train, only the final "
            f"evaluation. To train on, raise the budget: flowvae train --out {out} --resume {more}")
    writer = SummaryWriter(str(out / "tb")) if main else None
    test_x = test_ds[torch.arange(min(len(test_ds), 36))][0].to(dev)
    window = {"images": 0, "seconds": 0.0}
    # The bar counts steps; with a wall-clock budget its total is the step count the budget is expected to
    # allow at the recent speed. bpd, images/s and the ETA are over the last steps (this rank's batches).
    bar = Progress(total=t.max_steps, desc="train", unit="steps", enabled=progress and main,
                   bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| [{elapsed}{postfix}]", initial=step)
    recent = collections.deque(maxlen=20)  # (bpd or None, images, seconds) of the last steps
    run_steps = run_skipped = 0
    amp = autocast_context(t.precision, dev)
    stop_agreed = False
    model.train()
    with _Stop() as stop:
        try:
            while step < t.max_steps and train_seconds < budget and not stop_agreed:
                if batch_in_epoch >= batches_per_epoch:  # a checkpoint taken on an epoch's last batch
                    epoch, batch_in_epoch = epoch + 1, 0
                idx = D.rank_indices(len(train_ds), t.batch_size, t.seed, epoch, rank, world, start_batch=batch_in_epoch)
                for x, _ in iterate_batches(train_ds, t.batch_size // world, indices=idx, workers=cfg.data.workers):
                    tic = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    chunks = x.split(micro)
                    # beta times the KL warm-up (Sonderby et al. 2016, Ladder VAE): objective.py's schedule.
                    kl_weight = model.objective.kl_scale(step)
                    local_finite, sums, loss_sum, step_bpd = True, {key: 0.0 for key in logged}, 0.0, 0.0
                    tc_codes: list = []
                    logging = step + 1 == 1 or (step + 1) % t.log_every == 0
                    for i, xm in enumerate(chunks):
                        torch.manual_seed(D.step_seed(t.seed, step, rank * len(chunks) + i))
                        sync = ddp is None or i == len(chunks) - 1
                        with (contextlib.nullcontext() if sync else ddp.no_sync()):
                            with amp:
                                out_d = run_loss(xm.to(dev, non_blocking=True), kl_weight)
                            loss = out_d["loss"]
                            if tc is not None:  # gamma * TC(z) in bits/dim, like the KL; not part of elbo_bpd
                                z_glob = out_d["code"]["global"]
                                loss = loss + tc.loss_bpd(z_glob, model.bound)
                                tc_codes.append(z_glob.detach())
                            loss = loss / len(chunks)
                            finite = bool(torch.isfinite(loss))
                            local_finite &= finite
                            step_bpd += loss.item() if finite else 0.0
                            # Under DDP every rank must run every backward (the all-reduce is in it); a
                            # non-finite loss then poisons the reduced gradients and the step is skipped.
                            if finite or ddp is not None:
                                scaler.scale(loss).backward()
                        if logging:
                            loss_sum += loss.item()
                            for key in logged:
                                sums[key] += out_d[key].detach().float().mean().item() / len(chunks)
                    gnorm = torch.tensor(float("nan"))
                    if local_finite or ddp is not None:
                        scaler.unscale_(opt)
                        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
                    bad = not (local_finite and bool(torch.isfinite(gnorm)))
                    bad = bool(D.reduce_flags(info, dev, bad=bad)["bad"])
                    if not bad:
                        scaler.step(opt)
                        scaler.update()
                        sched.step()
                        for g in opt.param_groups:  # LambdaLR set the warmed-up lr; the schedule scales it
                            g["lr"] *= lr_factor(t, step + 1, train_seconds)
                        ema.update(model)
                        if tc is not None:
                            tc.update(torch.cat(tc_codes), info)
                    else:
                        skipped += 1
                        if scaler.is_enabled() and (local_finite or ddp is not None):
                            scaler.update()  # an fp16 overflow: back off the loss scale
                    step += 1
                    batch_in_epoch += 1
                    if dev.type == "cuda":
                        torch.cuda.synchronize()
                    agreed = D.reduce_flags(info, dev, dt=time.perf_counter() - tic, stop=stop.requested)
                    dt, stop_agreed = agreed["dt"], bool(agreed["stop"])
                    train_seconds += dt
                    window["images"] += x.shape[0] * world
                    window["seconds"] += dt
                    run_steps += 1
                    run_skipped += bad
                    recent.append((None if bad else step_bpd, x.shape[0] * world, dt))
                    if bar.enabled:
                        _show_progress(bar, recent, step, t.max_steps, budget - train_seconds, skipped)
                    if run_steps >= SKIP_CHECK_AFTER and run_skipped > t.max_skip_fraction * run_steps:
                        raise TrainingError(
                            f"stopping at step {step}: {run_skipped} of this run's {run_steps} steps had a non-finite "
                            f"loss or gradient norm and were skipped (more than train.max_skip_fraction="
                            f"{t.max_skip_fraction:g}). The model is diverging: lower train.lr (now {t.lr:g}), raise "
                            f"train.warmup_steps, or lower model.coupling_clamp; the checkpoint keeps the last good weights")
                    if logging:
                        vals = torch.tensor([loss_sum, *sums.values()], dtype=torch.float64, device=dev)
                        vals = D.all_reduce(vals, info, "mean").tolist()
                        if main:
                            for key, v in zip(logged, vals[1:]):
                                writer.add_scalar(f"train/{key}", v, step)
                            writer.add_scalar("train/loss", vals[0], step)
                            writer.add_scalar("train/grad_norm", gnorm.item(), step)
                            writer.add_scalar("train/lr", opt.param_groups[0]["lr"], step)
                            writer.add_scalar("train/skipped_steps", skipped, step)
                            if tc is not None:
                                for key, v in tc.last.items():
                                    writer.add_scalar(f"train/{key}", v, step)
                            writer.add_scalar("train/images_per_sec", window["images"] / max(window["seconds"], 1e-9), step)
                            if scaler.is_enabled():
                                writer.add_scalar("train/loss_scale", scaler.get_scale(), step)
                        window = {"images": 0, "seconds": 0.0}
                    if t.eval_every and step % t.eval_every == 0:
                        res = evaluate(ema.model, test_ds, k=1, batch_size=cfg.eval.batch_size, limit=eval_images,
                                       progress=False, seed=t.seed, dist_info=info)
                        if main:
                            for key, v in res.items():
                                if key in logged or key.startswith("active_units"):
                                    writer.add_scalar(f"eval/{key}", v, step)
                            _log_images(writer, ema.model, test_x, step)
                            bar.write(f"step {step}: test elbo_bpd {res['elbo_bpd']:.4f} ({res['images']} images, {weights})")
                    if t.checkpoint_every and step % t.checkpoint_every == 0:
                        checkpoint()
                    if step >= t.max_steps or train_seconds >= budget or stop_agreed:
                        break
                else:
                    epoch += 1
                    batch_in_epoch = 0
        except KeyboardInterrupt:  # a second Ctrl-C: the step in flight may be half done, so do not save it
            bar.close()
            if writer:
                writer.close()
            say(f"stopped at once by a second Ctrl-C; {ckpt_path} holds the last periodic checkpoint")
            raise
        except Exception as exc:
            # A crash mid-run (a corrupt file read lazily, out of memory, a lost peer process, ...) keeps the
            # last finished step: the counters move only after the optimiser step, so they match the weights.
            bar.close()
            if writer:
                writer.close()
            if isinstance(exc, CheckpointError):  # saving itself failed (disk full): trying again would too
                raise
            try:
                checkpoint()
            except CheckpointError as save_error:
                say(f"training failed at step {step}, and {save_error}")
                raise exc from None
            say(f"training failed at step {step}; checkpoint saved to {ckpt_path} (continue with --resume)")
            raise
        bar.close()
        checkpoint()
        if stop_agreed:
            if writer:
                writer.close()
            say(f"interrupted at step {step}: checkpoint saved to {ckpt_path}; continue with --resume")
            return {"interrupted": True, "step": step}

    if run_skipped:
        say(f"warning: {run_skipped} of this run's {run_steps} steps ({100 * run_skipped / run_steps:.0f}%) were skipped "
            f"(non-finite loss or gradient norm); if this grows, lower train.lr or raise train.warmup_steps")
    res = evaluate(ema.model, test_ds, k=1, batch_size=cfg.eval.batch_size, limit=eval_images, progress=progress and main,
                   seed=t.seed, dist_info=info)
    res.update(step=step, epochs=round(step / batches_per_epoch, 3), skipped_steps=skipped,
               train_minutes=round(train_seconds / 60, 2), world_size=world)
    if info.enabled:
        res["rank_param_max_diff"] = D.max_parameter_difference(model, info)
    if main:
        for key in logged:
            writer.add_scalar(f"eval/{key}", res[key], step)
        _log_images(writer, ema.model, test_x, step)
        writer.close()
        write_json(res, out / "train_metrics.json")
    say(f"done: step {step}, {train_seconds / 60:.1f} min training, test elbo_bpd {res['elbo_bpd']:.4f} "
        f"on {res['images']} images ({weights}); checkpoint {ckpt_path}")
    return res
