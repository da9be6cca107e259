"""The training engine behind ``flowvae train`` : one process, or many under torchrun.

    flowvae train --config configs/quickstart.yaml --out runs/quick
    flowvae train --config configs/fashion_mnist.yaml --out runs/fm train.max_minutes=25   # stop early
    flowvae train --config configs/fashion_mnist.yaml --out runs/fm train.max_steps=0 train.max_minutes=25
    flowvae train --out runs/fm --resume          # continue the same run from runs/fm/checkpoint.pt

    # the same command under torchrun: one node, 4 GPUs (NCCL) or 4 CPU processes (gloo)
    torchrun --standalone --nproc_per_node 4 -m flowvae train --config configs/fashion_mnist.yaml --out runs/fm
    # two nodes (run on each; runs/fm on a shared file system); --max-restarts resumes after a lost worker
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv-backend c10d --rdzv-endpoint $HEAD:29500 --rdzv-id fm \\
        --max-restarts 3 -m flowvae train --config configs/fashion_mnist.yaml --out runs/fm --resume
    # mixed precision and gradient accumulation (the global batch stays train.batch_size)
    flowvae train --config configs/fashion_mnist.yaml --out runs/fm train.precision=bf16 train.grad_accum=2

The pieces: step.py (one optimiser step: forward, backward, clip, skip if non-finite, update),
schedule.py (the lr, a function of the step and the planned step count alone), loop.py (the loop,
and separately its budget, logging, evaluation and checkpoints), ema.py, terms.py (extra loss terms
such as the Factor-VAE TC penalty). This module sets a run up: resume checks, data, model,
data-dependent ActNorm init on one large batch, optimiser (Adamax/AdamW), DDP; then the loop, the
final checkpoint and the final evaluation.

The run is planned in steps: ``train.max_steps`` is its length and the lr schedule's. The wall-clock
budget ``train.max_minutes`` (time in training steps only, not evaluation or checkpoints, carried
across resumes) can only stop a run early; it never changes the lr. With ``train.max_steps: 0`` the
step count is planned once from ``train.max_minutes`` at the end of the warm-up, printed and stored in
the checkpoint, so ``--resume`` (with any budget) continues the same schedule. Non-finite steps are
skipped and counted; EMA weights (``train.ema_decay`` > 0) are what evaluation, images and the final
metrics use; checkpoints every ``train.checkpoint_every`` steps, at the end and on Ctrl-C / SIGTERM;
TensorBoard logs under ``<out>/tb``. If a checkpoint cannot be written to ``--out`` (a full disk), it
goes to a folder in the system's temporary directory and the error says how to continue from it.

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
* Besides DDP's gradient all-reduce, one all-reduce per step carries the finiteness of each rank's loss
  and gradient norm, a Ctrl-C / SIGTERM on any rank and the time budget (any rank's clock), so all
  ranks skip together and stop after the same step; log steps add one for the logged means. A
  time-planned step count is the smallest over ranks.
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

import dataclasses
import functools
import inspect
import os
from pathlib import Path
from typing import Optional

import torch
import yaml

from ..checkpoint import CheckpointError, checkpoint_config, read_checkpoint, upgrade_optimizer_state, upgrade_state_dict
from ..config import Config
from ..data import load_dataset
from ..errors import UsageError
from ..model import FlowVAE
from ..runtime import (PRECISIONS, OutputError, apply_threads, autocast_context, check_output,  # noqa: F401
                       describe_write_error, resolve_device)  # resolve_device, PRECISIONS: re-exported
from . import distributed as D
from .ema import EMA
from .evaluate import model_terms, write_json
from .loop import (Budget, Checkpointer, Counters, Logger, Run, StopSignal, StuckRun, TrainingError, log_images,  # noqa: F401
                   periodic_evaluation, run_loop, weights)
from .schedule import configured_plan, get_lr, resumed_plan  # noqa: F401  (get_lr: re-exported)
from .step import LossModule, Trainer
from .terms import extra_terms

DDP_ARGS = inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters


def build_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``train.optimizer`` over the model's parameters; the lr is set from schedule.get_lr every step."""
    t = cfg.train
    cls = torch.optim.Adamax if t.optimizer == "adamax" else torch.optim.AdamW
    return cls(model.parameters(), lr=get_lr(0, t, configured_plan(t)), weight_decay=t.weight_decay)


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
    say = print if info.is_main else (lambda *a, **k: None)
    state = _resumable_state(cfg, out, resume)
    t = cfg.train
    if t.precision == "fp16" and info.device.type == "cpu":
        say("note: train.precision=fp16 on CPU runs (torch autocast supports it) but is usually slower than fp32; "
            "bf16 is the reduced precision CPUs accelerate")
    threads = apply_threads(t.threads)
    torch.manual_seed(t.seed)
    if info.is_main:
        check_output(out, "--out", is_dir=True)  # before loading data or building the model
        write_config(out, cfg)
    run = _setup(cfg, out, info, state, say)
    if info.is_main:
        _summary(run, threads, resumed=state is not None)
    budget, ckpt = Budget(run), Checkpointer(run)
    if budget.done():
        _say_budget_used(run, budget)
    log = Logger(run, progress)
    run.tr.model.train()
    with StopSignal() as stop:
        interrupted = _guarded_loop(run, budget, log, ckpt, stop)
    if interrupted:
        log.close()
        say(f"interrupted at step {run.c.step}: checkpoint saved to {ckpt.path}; continue with --resume")
        return {"interrupted": True, "step": run.c.step}
    return _finish(run, log, progress)


def _guarded_loop(run: Run, budget: Budget, log: Logger, ckpt: Checkpointer, stop: StopSignal) -> bool:
    """The loop, then the final checkpoint. A crash mid-run (a corrupt file read lazily, out of memory, a
    lost peer process, ...) keeps the last finished step: the counters match the weights."""
    try:
        interrupted = run_loop(run, budget, log, ckpt, stop)
        ckpt.save()
    except KeyboardInterrupt:  # a second Ctrl-C: the step in flight may be half done, so do not save it
        log.close()
        run.say(f"stopped at once by a second Ctrl-C; {ckpt.path} holds the last periodic checkpoint")
        raise
    except StuckRun:  # the weights every batch fails on: keep the checkpoint from before the streak
        log.close()
        raise
    except Exception as exc:
        log.close()
        if isinstance(exc, CheckpointError):  # saving itself failed (disk full): trying again would too
            raise
        try:
            ckpt.save()
        except CheckpointError as save_error:
            run.say(f"training failed at step {run.c.step}, and {save_error}")
            raise exc from None
        run.say(f"training failed at step {run.c.step}; checkpoint saved to {ckpt.path} (continue with --resume)")
        raise
    return interrupted


def _finish(run: Run, log: Logger, progress: bool) -> dict:
    """The final evaluation (sharded over ranks), its TensorBoard entries and train_metrics.json."""
    c, info, guard = run.c, run.tr.info, run.guard
    log.bar.close()
    if guard.skipped:
        run.say(f"warning: {guard.skipped} of this run's {guard.steps} steps ({100 * guard.skipped / guard.steps:.0f}%) were "
                f"skipped (non-finite loss or gradient norm); if this grows, lower train.lr or raise train.warmup_steps")
    res = periodic_evaluation(run, progress=progress and run.main)
    res.update(step=c.step, epochs=round(c.step / run.batches_per_epoch, 3), skipped_steps=c.skipped,
               train_minutes=round(c.train_seconds / 60, 2), world_size=info.world_size, planned_steps=c.planned_steps)
    if info.enabled:
        res["rank_param_max_diff"] = D.max_parameter_difference(run.tr.model, info)
    if log.writer is not None:
        for key in run.tr.logged:
            log.writer.add_scalar(f"eval/{key}", res[key], c.step)
        log_images(log.writer, run.eval_model, log.test_x, c.step)
        write_json(res, run.out / "train_metrics.json")
    log.close()
    run.say(f"done: step {c.step}, {c.train_seconds / 60:.1f} min training, test elbo_bpd {res['elbo_bpd']:.4f} "
            f"on {res['images']} images ({weights(run.t)}); checkpoint {run.out / 'checkpoint.pt'}")
    return res


# ------------------------------------------------------------------------------------- set-up
def _resumable_state(cfg: Config, out: Path, resume: bool) -> Optional[dict]:
    """The checkpoint to continue (None for a new run), after checking that this config may continue it."""
    ckpt_path = out / "checkpoint.pt"
    if not ckpt_path.exists():
        return None
    if not resume:
        raise FileExistsError(f"{out} already holds a run (checkpoint.pt). Pass --resume to continue it, "
                              f"or choose another --out.")
    state = read_checkpoint(ckpt_path)
    saved = checkpoint_config(state, ckpt_path)
    # These decide the weights' shapes, the optimiser state or the data order: changing them mid-run
    # would silently repeat or skip data, or fail later. lr, warm-up, budgets, logging, precision,
    # grad_accum and the number of processes may change; so may the whole loss: section (it shapes the
    # gradient, not the weights or the reported bound) and model.coupling_impl (how the same weights run).
    fixed = {"model": (dataclasses.replace(saved.model, coupling_impl=cfg.model.coupling_impl), cfg.model),
             "data": (saved.data, cfg.data),
             "train.batch_size": (saved.train.batch_size, cfg.train.batch_size),
             "train.seed": (saved.train.seed, cfg.train.seed),
             "train.optimizer": (saved.train.optimizer, cfg.train.optimizer)}
    changed = [k for k, (a, b) in fixed.items() if a != b]
    if changed:
        raise UsageError(f"--resume: {', '.join(changed)} differ from the run in {out}; resume without --config "
                         f"(the run's saved config is used), override only other train.* keys, or start a new run")
    state["saved_train"], state["path"] = saved.train, ckpt_path  # for _load's plan and message; not saved
    return state


def write_config(out: Path, cfg: Config) -> None:
    """``<out>/config.yaml``, written whole or not at all (a full disk leaves no empty file); a failure
    names --out and the free space of the disk that holds it."""
    path = out / "config.yaml"
    tmp = out / ".config.yaml.tmp"
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"--out {out}: cannot write {path.name}: {describe_write_error(path, e)}") from None


def _setup(cfg: Config, out: Path, info: D.DistInfo, state: Optional[dict], say) -> Run:
    t = cfg.train
    train_ds = load_dataset(cfg.data, cfg.model, "train")
    test_ds = load_dataset(cfg.data, cfg.model, "test")
    batches_per_epoch = len(train_ds) // t.batch_size
    if batches_per_epoch == 0:
        raise UsageError(f"train.batch_size={t.batch_size} is larger than the training set ({len(train_ds)} images)")
    if t.init_batch_size > len(train_ds):
        say(f"note: train.init_batch_size={t.init_batch_size} is larger than the training set; the data-dependent "
            f"init uses all {len(train_ds)} images")
    eval_images = min(t.eval_images, len(test_ds)) if t.eval_images else len(test_ds)
    if t.eval_images > len(test_ds):
        say(f"note: train.eval_images={t.eval_images} is larger than the test set; evaluating on all {len(test_ds)} images")
    tr, c = _build(cfg, info, state, train_ds, say)
    return Run(cfg, out, tr, c, train_ds, test_ds, batches_per_epoch, eval_images, say)


def _build(cfg: Config, info: D.DistInfo, state: Optional[dict], train_ds, say) -> tuple[Trainer, Counters]:
    """Model, optimiser, scaler, EMA and extra terms: fresh (data-dependent init) or from the checkpoint."""
    t, dev = cfg.train, info.device
    model = FlowVAE.from_config(cfg).to(dev)  # with cfg.loss: the objective (objective.py) it trains under
    model.glow.set_memory(t.memory)  # the EMA copy evaluates without a graph: it needs no setting
    opt = build_optimizer(cfg, model)
    scaler = torch.amp.GradScaler(dev.type, enabled=t.precision == "fp16")
    terms = extra_terms(cfg, model, dev)  # e.g. Factor-VAE's discriminator: trains alongside, outside the bound
    if state is None:
        c = Counters(planned_steps=configured_plan(t))
        # Every rank initialises from the same batch and the same random state; rank 0's result is then
        # broadcast, so all ranks hold bitwise identical weights before the first step.
        init_idx = torch.randperm(len(train_ds), generator=torch.Generator().manual_seed(t.seed))[: t.init_batch_size]
        model.initialize(train_ds[init_idx][0].to(dev))
        D.broadcast_module(model, info)
        ema = EMA(model, t.ema_decay)
    else:
        c, ema = _load(cfg, state, model, opt, scaler, terms, info, say)
    tr = Trainer(model, opt, scaler, ema, info, D.micro_batch_size(t.batch_size, info.world_size, t.grad_accum),
                 t.grad_clip, t.seed, amp=functools.partial(autocast_context, t.precision, dev),
                 ddp=_wrap_ddp(model, info), terms=terms, logged=model_terms(model))
    return tr, c


def _load(cfg: Config, state: dict, model, opt, scaler, terms, info: D.DistInfo, say) -> tuple[Counters, EMA]:
    """A checkpoint's weights, optimiser, scaler, term and counter states; this config's lr and weight
    decay apply from here on (overrides on resume work)."""
    t = cfg.train
    model.load_state_dict(upgrade_state_dict(state["model"], cfg.model))
    opt.load_state_dict(upgrade_optimizer_state(state["optimizer"], state["model"], model))
    for g in opt.param_groups:
        g["weight_decay"] = t.weight_decay
        g.pop("initial_lr", None)  # written by the LambdaLR of checkpoints from before schedule.py
    if scaler.is_enabled() and state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    for term in terms:
        term.load_state_dict(state.get(term.name))
    c = Counters(state["step"], state["epoch"], state["batch_in_epoch"], state["skipped_steps"],
                 state["train_seconds"], resumed_plan(t, state["saved_train"], state))
    D.broadcast_module(model, info)
    ema = EMA(model, t.ema_decay, updates=c.step - c.skipped)
    if state.get("ema") is not None:
        ema.load_state_dict(upgrade_state_dict(state["ema"], cfg.model))
    was = state.get("world_size", 1)
    say(f"resumed {state.get('path', 'the checkpoint')} at step {c.step} (epoch {c.epoch}, "
        f"{c.train_seconds / 60:.1f} min trained)" + (f"; it ran on {was} process(es), now {info.world_size}"
                                                      if was != info.world_size else ""))
    _say_plan_change(t, state, c, say)
    return c, ema


def _say_plan_change(t, state: dict, c: Counters, say) -> None:
    old = state.get("planned_steps")
    if "planned_steps" not in state:
        say(f"note: a checkpoint from before planned step counts: its lr schedule continues as a plan of "
            f"{c.planned_steps} steps (lr at step {c.step}: {get_lr(c.step, t, c.planned_steps):.3g})")
    elif old is not None and c.planned_steps != old:
        say(f"note: train.max_steps={t.max_steps} re-plans the run (it was planned for {old} steps): from step "
            f"{c.step} on the lr follows a plan of {c.planned_steps} steps (lr {get_lr(c.step, t, old):.3g} -> "
            f"{get_lr(c.step, t, c.planned_steps):.3g}); the steps taken keep the lr they had")


def _wrap_ddp(model: FlowVAE, info: D.DistInfo):
    if not info.enabled:
        return None
    # Buffers (LU permutations, masks, init flags) never change after the broadcast: no per-step sync.
    no_buffer_sync = ({"forward_sync_buffers": False} if "forward_sync_buffers" in DDP_ARGS
                      else {"broadcast_buffers": False})
    dev = info.device
    return torch.nn.parallel.DistributedDataParallel(LossModule(model), device_ids=[dev.index] if dev.type == "cuda" else None,
                                                     gradient_as_bucket_view=True, **no_buffer_sync)


# ------------------------------------------------------------------------------------- messages
def _summary(run: Run, threads: int, resumed: bool) -> None:
    """One block at the start: what is trained on what, where, and where the results go."""
    cfg, model, dev, world = run.cfg, run.tr.model, run.tr.info.device, run.tr.info.world_size
    t, m = cfg.train, cfg.model
    params = sum(p.numel() for p in model.parameters())
    kind = "flow-only Glow" if m.type == "glow" else f"hybrid (VAE + conditional Glow, {m.injection} injection)"
    how = {0: "auto", -1: "torch's default"}.get(t.threads, f"train.threads={t.threads}")
    where = f"{dev}" + (f", {threads} CPU thread{'s' if threads != 1 else ''} ({how})" if dev.type == "cpu" else "")
    plan = (f"{run.c.planned_steps} steps" if run.c.planned_steps is not None
            else f"planned from train.max_minutes at the end of the warm-up (step {t.warmup_steps})")
    stop = f"; stops early after {t.max_minutes:g} min of training steps" if t.max_minutes > 0 else ""
    every = f", every {t.checkpoint_every} steps" if t.checkpoint_every else ""
    c, h, w = model.image_shape
    name = getattr(run.train_ds, "name", cfg.data.dataset)
    print("\n".join([
        f"flowvae train ({'resuming' if resumed else 'new run'}): {kind}, {params:,} parameters, {m.levels} levels x {m.steps} steps",
        f"  data        {name}: {len(run.train_ds):,} train / {len(run.test_ds):,} test images ({c}x{h}x{w}, {m.n_bits}-bit)",
        f"  device      {where}{f', {world} processes' if world > 1 else ''}",
        f"  precision   {t.precision}, batch {t.batch_size}, lr {t.lr:g} ({t.lr_schedule}), run {plan}{stop}",
        f"  checkpoint  {run.out / 'checkpoint.pt'}{every} (continue with --resume)",
        f"  tensorboard tensorboard --logdir {run.out / 'tb'}",
    ]), flush=True)


def _say_budget_used(run: Run, budget: Budget) -> None:
    c, t, out = run.c, run.t, run.out
    if c.planned_steps is not None and c.step >= c.planned_steps:
        used, more = f"{c.planned_steps} planned steps", f"train.max_steps={2 * c.planned_steps}"
    else:
        used = f"train.max_minutes={t.max_minutes:g}: {c.train_seconds / 60:.1f} min trained"
        more = f"train.max_minutes={2 * t.max_minutes:g}"
    run.say(f"this run has already used its budget ({used}, step {c.step}): nothing to train, only the final "
            f"evaluation. To train on, raise the budget: flowvae train --out {out} --resume {more}")
