"""Training memory that does not grow with depth (``train.memory``).

A Glow level's K steps store, per step, the coupling network's hidden activations (pixels x hidden,
three tensors): with standard backprop that memory grows linearly in K. Two ways around it:

* ``recompute`` (reversible backprop, as in RevNets / i-RevNet): the steps run without recording a
  graph and only the level's output is kept. The backward pass walks the layers from the last to
  the first, rebuilding each layer's input from its output with the layer's exact inverse
  (:meth:`FlowLayer.rebuild`), re-running that one layer with autograd on, and back-propagating
  through it alone. Memory: one layer's graph at a time, whatever K. Cost: one more forward pass
  plus the (cheap) inverses; the coupling shares one network pass between its inverse and its
  re-run. The rebuilt inputs equal the stored ones up to rounding (float64: ~1e-15 relative).
* ``checkpoint``: ``torch.utils.checkpoint`` per flow step: each step's input is kept and the step is
  re-run in the backward pass. Memory: K step inputs (small) plus one step's graph.

Both give every input its gradient: the level's input, each layer's parameters and the conditioning
tensors (z, the maps decoded from z, the level codes), which feed every coupling of the level.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .base import Cond

MEMORY_MODES = ("standard", "recompute", "checkpoint")


def run_steps(steps: Sequence[nn.Module], x: Tensor, cond: Optional[Cond], memory: str = "standard") -> tuple[Tensor, Tensor]:
    """Apply the flow steps in order; returns (output, summed logdet). ``memory`` as in the module doc; it
    only matters when a graph is recorded (training), and not during ActNorm's data-dependent init."""
    if memory not in MEMORY_MODES:
        raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
    layers = [layer for step in steps for layer in step.layers]
    if memory == "standard" or not torch.is_grad_enabled() or any(getattr(m, "_init_pending", False) for m in layers):
        total = 0
        for step in steps:
            x, ld = step(x, cond)
            total = total + ld
        return x, total
    if memory == "checkpoint":
        total = 0
        for step in steps:
            x, ld = checkpoint(step, x, cond, use_reentrant=False)
            total = total + ld
        return x, total
    return reversible(layers, x, cond)


def reversible(layers: Sequence[nn.Module], x: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
    """The flow layers applied in order with reversible backprop (each needs ``inverse`` and ``rebuild``)."""
    cond = cond if cond is not None else Cond()
    present = tuple(f for f in Cond._fields if getattr(cond, f) is not None)
    params = [p for layer in layers for p in layer.parameters()]
    return _Reversible.apply(x, list(layers), present, len(present), *[getattr(cond, f) for f in present], *params)


class _Reversible(torch.autograd.Function):
    """``layers`` applied in order without storing activations; see the module docstring."""

    @staticmethod
    def forward(ctx, x, layers, present, n_cond, *tensors):
        conds = tensors[:n_cond]
        cond = Cond(**dict(zip(present, conds)))
        dev = x.device.type
        ctx.layers, ctx.present = layers, present
        ctx.autocast = (torch.is_autocast_enabled(dev), torch.get_autocast_dtype(dev), dev)
        total = 0
        for layer in layers:  # grad mode is off inside Function.forward: nothing is recorded
            x, ld = layer(x, cond)
            total = total + ld
        ctx.save_for_backward(x, *conds)
        return x, total

    @staticmethod
    def backward(ctx, gy, gld):
        y, *conds = ctx.saved_tensors
        leaves = [c.detach().requires_grad_(c.requires_grad) for c in conds]
        cond = Cond(**dict(zip(ctx.present, leaves)))
        g_cond: list[Optional[Tensor]] = [None] * len(conds)
        g_params: list[Optional[Tensor]] = []
        enabled, dtype, dev = ctx.autocast
        y = y.detach()
        with torch.enable_grad(), torch.autocast(dev, dtype=dtype, enabled=enabled):
            for layer in reversed(ctx.layers):
                x, x_leaves, out, ld = layer.rebuild(y, cond)
                params = list(layer.parameters())
                wanted = list(x_leaves) + [c for c in leaves if c.requires_grad] + [p for p in params if p.requires_grad]
                outs, grads_out = [out], [gy]
                if ld.requires_grad:
                    outs.append(ld)
                    grads_out.append(gld)
                got = torch.autograd.grad(outs, wanted, grads_out, allow_unused=True)
                got = [torch.zeros_like(w) if g is None else g for g, w in zip(got, wanted)]
                n_x = len(x_leaves)
                gy = got[0] if n_x == 1 else torch.cat(got[:n_x], 1)
                rest = iter(got[n_x:])
                for i, c in enumerate(leaves):
                    if c.requires_grad:
                        g = next(rest)
                        g_cond[i] = g if g_cond[i] is None else g_cond[i] + g
                layer_grads = [next(rest) if p.requires_grad else None for p in params]
                g_params = layer_grads + g_params  # the layers are walked last to first
                y = x
        return (gy, None, None, None, *g_cond, *g_params)
