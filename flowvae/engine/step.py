"""One optimiser step: forward, backward, clip, skip if non-finite, update. No clock, no logging, no I/O.

The only host sync is one combined finiteness check of the loss and the gradient norm (under DDP it
travels, with the loop's stop flags, in one all-reduce), so a GPU is not stalled by per-micro-batch
``.item()`` calls; logged values stay on the device until the loop reads them on its log steps.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Optional, Union

import torch
from torch import Tensor, nn

from . import distributed as D


@dataclass
class Trainer:
    """What a step changes or reads: the model (and its DDP wrapper), optimiser, gradient scaler, EMA,
    extra loss terms and the fixed settings of the step."""
    model: nn.Module
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    ema: object
    info: D.DistInfo
    micro: int                          # images per micro-batch
    grad_clip: float
    seed: int
    amp: Callable = contextlib.nullcontext
    ddp: Optional[nn.Module] = None     # the DistributedDataParallel wrapper of LossModule(model)
    terms: list = field(default_factory=list)
    logged: tuple = ()                  # the model's per-image terms to average for the log


@dataclass
class StepResult:
    applied: bool                       # False: a non-finite loss or gradient norm on some rank; nothing changed
    flags: dict                         # the loop's flags, max-reduced over ranks with the finiteness check
    loss: Tensor                        # this rank's training loss (0-d, on the device)
    grad_norm: Tensor
    terms: dict                         # this rank's mean of each logged term (0-d tensors; only when asked)


class LossModule(nn.Module):
    """What DDP wraps: its forward is the model's training loss (DDP hooks need a forward call)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: Tensor, kl_weight: Union[None, float, dict] = None) -> dict:
        return self.model.loss(x, kl_weight)


def train_step(tr: Trainer, x: Tensor, step: int, lr: float, kl_weight: Union[float, dict],
               flags: Callable[[], dict] = dict, log_terms: bool = False) -> StepResult:
    """Optimiser step ``step`` (0-based) on this rank's share ``x`` of the global batch at ``lr``.

    ``x`` is cut into micro-batches of ``tr.micro`` images whose gradients accumulate (under DDP they are
    all-reduced once, on the last). Each micro-batch draws its noise from a generator seeded by (seed,
    step, global micro-batch index). A non-finite loss or gradient norm on any rank skips the update
    on all ranks (an fp16 overflow also backs off the loss scale). ``flags()`` (name -> number: the loop's
    stop requests, read after the backward pass) are max-reduced over ranks in the same all-reduce and
    returned in ``StepResult.flags``."""
    model, opt, scaler, dev = tr.model, tr.opt, tr.scaler, tr.info.device
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    chunks = x.split(tr.micro)
    loss_sum = torch.zeros((), device=dev)
    terms = {key: torch.zeros((), device=dev) for key in tr.logged} if log_terms else {}
    for i, xm in enumerate(chunks):
        torch.manual_seed(D.step_seed(tr.seed, step, tr.info.rank * len(chunks) + i))
        last = tr.ddp is None or i == len(chunks) - 1
        with (contextlib.nullcontext() if last else tr.ddp.no_sync()):
            with tr.amp():
                out = (tr.ddp or model.loss)(xm.to(dev, non_blocking=True), kl_weight)
            loss = out["loss"]
            for term in tr.terms:
                loss = loss + term.loss(model, out)
            loss = loss / len(chunks)
            scaler.scale(loss).backward()  # a NaN loss gives NaN gradients: caught below with the norm
        loss_sum += loss.detach().float()
        for key in terms:
            terms[key] += out[key].detach().float().mean() / len(chunks)
    scaler.unscale_(opt)
    gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), tr.grad_clip)
    bad = ~(torch.isfinite(loss_sum) & torch.isfinite(gnorm))
    agreed = _agree(tr.info, bad, flags())  # the step's one host sync
    applied = not agreed.pop("bad")
    if applied:
        scaler.step(opt)
        scaler.update()
        tr.ema.update(model)
    elif scaler.is_enabled():
        scaler.update()  # an fp16 overflow: back off the loss scale
    for term in tr.terms:
        term.after_step(applied, tr.info)
    return StepResult(applied, agreed, loss_sum, gnorm, terms)


def _agree(info: D.DistInfo, bad: Tensor, flags: dict) -> dict:
    """The finiteness flag and the loop's flags, max over ranks in one all-reduce, read in one sync."""
    t = torch.cat([bad.reshape(1).to(torch.float64),
                   torch.tensor([float(v) for v in flags.values()], dtype=torch.float64).to(bad.device)])
    values = D.all_reduce(t, info, "max").tolist()
    return {"bad": bool(values[0]), **{k: v for k, v in zip(flags, values[1:])}}
