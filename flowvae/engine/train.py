"""The training engine behind ``flowvae train`` (and scripts/train.py): one process, or many under torchrun.

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
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import math
import signal
import time
from pathlib import Path
from typing import Optional

import torch
import yaml
from torch import nn
from tqdm import tqdm

from ..checkpoint import read_checkpoint, save_checkpoint
from ..config import Config, config_from_dict
from ..data import iterate_batches, load_dataset
from ..model import FlowVAE
from ..visualize import grid
from . import distributed as D
from .evaluate import evaluate, model_terms, write_json
from .generate import reconstruct_grid, resample_level_grid, sample_images, swap_grid
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DDP_ARGS = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device (torch.cuda.is_available() is False)")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def autocast_context(precision: str, device: torch.device):
    """The forward-pass context of ``train.precision`` (a no-op for fp32)."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


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


class _LossModule(nn.Module):
    """What DDP wraps: its forward is the model's training loss (DDP hooks need a forward call)."""

    def __init__(self, model: FlowVAE):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, kl_weight: float = 1.0) -> dict:
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
        saved = config_from_dict(state["config"])
        # These decide the weights' shapes, the optimiser state or the data order: changing them mid-run
        # would silently repeat or skip data, or fail later. lr, warm-up, budgets, logging, precision,
        # grad_accum and the number of processes may change.
        fixed = {"model": (saved.model, cfg.model), "data": (saved.data, cfg.data),
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
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(t.seed)
    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))

    train_ds = load_dataset(cfg.data, cfg.model, "train")
    test_ds = load_dataset(cfg.data, cfg.model, "test")
    batches_per_epoch = len(train_ds) // t.batch_size
    if batches_per_epoch == 0:
        raise ValueError(f"train.batch_size={t.batch_size} is larger than the training set ({len(train_ds)} images)")

    model = FlowVAE.from_config(cfg.model).to(dev)
    logged = model_terms(model)  # the bound's terms, plus each latent group's KL for a hierarchical model
    opt, sched = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=t.precision == "fp16")
    step, epoch, batch_in_epoch, skipped, train_seconds = 0, 0, 0, 0, 0.0
    tc = None
    if cfg.model.tc_weight > 0:  # Factor-VAE: its discriminator trains alongside, outside the reported bound
        from ..tc import TCPenalty
        tc = TCPenalty(cfg.model.z_dim, cfg.model.tc_weight, dev)
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        # The loaded state carries the old lr / weight decay; apply this config's (overrides on resume work).
        sched.base_lrs = [t.lr for _ in opt.param_groups]
        for g in opt.param_groups:
            g["initial_lr"], g["weight_decay"] = t.lr, t.weight_decay
            g["lr"] = t.lr * sched.lr_lambdas[0](sched.last_epoch)
        if scaler.is_enabled() and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        step, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
        skipped, train_seconds = state["skipped_steps"], state["train_seconds"]
        if tc is not None and state.get("tc") is not None:
            tc.load_state_dict(state["tc"])
        D.broadcast_module(model, info)
        ema = EMA(model, t.ema_decay, updates=step - skipped)
        ema.model.load_state_dict(state["ema"])
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
    writer = SummaryWriter(str(out / "tb")) if main else None
    test_x = test_ds[torch.arange(min(len(test_ds), 36))][0].to(dev)
    window = {"images": 0, "seconds": 0.0}
    # With a wall-clock budget the bar counts budget seconds (its ETA is then the real end), else steps.
    timed = math.isfinite(budget)
    bar = tqdm(total=round(budget) if timed else t.max_steps, initial=round(train_seconds) if timed else step,
               desc="train", unit="s" if timed else "step", disable=not (progress and main), dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt} {unit} [{elapsed}<{remaining}{postfix}]" if timed else None)
    amp = autocast_context(t.precision, dev)
    stop_agreed = False
    model.train()
    with _Stop() as stop:
        try:
            while step < t.max_steps and train_seconds < budget and not stop_agreed:
                idx = D.rank_indices(len(train_ds), t.batch_size, t.seed, epoch, rank, world, start_batch=batch_in_epoch)
                for x, _ in iterate_batches(train_ds, t.batch_size // world, indices=idx, workers=cfg.data.workers):
                    tic = time.perf_counter()
                    opt.zero_grad(set_to_none=True)
                    chunks = x.split(micro)
                    # KL warm-up (Sonderby et al. 2016, Ladder VAE): the training loss's KL weight ramps 0 -> 1.
                    kl_weight = min(1.0, (step + 1) / t.kl_warmup_steps) if t.kl_warmup_steps else 1.0
                    local_finite, sums, loss_sum = True, {key: 0.0 for key in logged}, 0.0
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
                                z_glob = out_d["z_sample"][:, : cfg.model.z_dim]
                                loss = loss + tc.weight * tc.penalty(z_glob).mean() / (model.num_dims * math.log(2))
                                tc_codes.append(z_glob.detach())
                            loss = loss / len(chunks)
                            finite = bool(torch.isfinite(loss))
                            local_finite &= finite
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
                    bar.update(min(dt, budget - bar.n) if timed else 1)
                    if logging:
                        vals = torch.tensor([loss_sum, *sums.values()], dtype=torch.float64, device=dev)
                        vals = D.all_reduce(vals, info, "mean").tolist()
                        if main:
                            bar.set_postfix(step=step, bpd=f"{vals[1]:.3f}", skipped=skipped)
                            for key, v in zip(logged, vals[1:]):
                                writer.add_scalar(f"train/{key}", v, step)
                            writer.add_scalar("train/loss", vals[0], step)
                            writer.add_scalar("train/grad_norm", gnorm.item(), step)
                            writer.add_scalar("train/lr", sched.get_last_lr()[0], step)
                            writer.add_scalar("train/skipped_steps", skipped, step)
                            if tc is not None:
                                for key, v in tc.last.items():
                                    writer.add_scalar(f"train/{key}", v, step)
                            writer.add_scalar("train/images_per_sec", window["images"] / max(window["seconds"], 1e-9), step)
                            if scaler.is_enabled():
                                writer.add_scalar("train/loss_scale", scaler.get_scale(), step)
                        window = {"images": 0, "seconds": 0.0}
                    if t.eval_every and step % t.eval_every == 0:
                        res = evaluate(ema.model, test_ds, k=1, batch_size=cfg.eval.batch_size, limit=t.eval_images,
                                       progress=False, seed=t.seed, dist_info=info)
                        if main:
                            for key, v in res.items():
                                if key in logged or key.startswith("active_units"):
                                    writer.add_scalar(f"eval/{key}", v, step)
                            _log_images(writer, ema.model, test_x, step)
                            tqdm.write(f"step {step}: test elbo_bpd {res['elbo_bpd']:.4f} ({res['images']} images, EMA)")
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
        except Exception:
            # A crash mid-run (a corrupt file read lazily, out of memory, a lost peer process, ...) keeps the
            # last finished step: the counters move only after the optimiser step, so they match the weights.
            bar.close()
            if writer:
                writer.close()
            checkpoint()
            say(f"training failed at step {step}; checkpoint saved to {ckpt_path} (continue with --resume)")
            raise
        bar.close()
        checkpoint()
        if stop_agreed:
            if writer:
                writer.close()
            say(f"interrupted at step {step}: checkpoint saved to {ckpt_path}; continue with --resume")
            return {"interrupted": True, "step": step}

    res = evaluate(ema.model, test_ds, k=1, batch_size=cfg.eval.batch_size, limit=t.eval_images, progress=progress and main,
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
        f"on {res['images']} images (EMA); checkpoint {ckpt_path}")
    return res
