"""The one direction convention every flow layer in flowvae follows.

``forward`` is the *normalizing* direction (data -> latent), ``inverse`` the
*generative* one (latent -> data). Both return ``(output, logdet)`` where
``logdet`` has shape ``[N]``, is float32 (or float64 when the input is), and is
``log |det d output / d input|`` of the map that was applied. So for any layer
``f.inverse(*f.forward(x))`` gives back ``x`` and the two log-dets sum to zero.

Layers take an optional conditioning ``cond`` (a :class:`Cond`). A layer that
does not use it ignores it, which lets the multi-scale Glow pass the same
``cond`` to every step.
"""
from __future__ import annotations

import contextlib
from typing import NamedTuple, Optional

import torch
from torch import Tensor, nn


class Cond(NamedTuple):
    """Conditioning seen by a flow layer.

    vec: ``[N, Dv]`` global code (the VAE's z), or None.
    map: ``[N, Cm, H, W]`` spatial code at the layer's resolution, or None.
    zmap: ``[N, Cz, H, W]`` a spatial map decoded from ``vec`` at the layer's resolution, or None.
    """

    vec: Optional[Tensor] = None
    map: Optional[Tensor] = None
    zmap: Optional[Tensor] = None


class FlowLayer(nn.Module):
    """Base class: an invertible map with a tractable log-determinant."""

    def forward(self, x: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:  # data -> latent
        raise NotImplementedError

    def inverse(self, y: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:  # latent -> data
        raise NotImplementedError

    def rebuild(self, y: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, tuple[Tensor, ...], Tensor, Tensor]:
        """Reversible backprop (recompute.py): from the output ``y``, the input ``x`` (detached), the leaf
        tensors whose gradients, concatenated on dim 1, are dL/dx, and ``forward``'s output and logdet
        recomputed from those leaves with autograd recording."""
        with torch.no_grad():
            x, _ = self.inverse(y, cond)
        x = x.detach().requires_grad_()
        out, ld = self(x, cond)
        return x.detach(), (x,), out, ld


def logdet_dtype(x: Tensor) -> torch.dtype:
    """Log-dets are accumulated in float32 at least, even under bf16/fp16 autocast."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def full_precision(x: Tensor):
    """A context that turns autocast off on ``x``'s device (a no-op when it is off): the layers whose
    outputs feed log-determinants or the latents themselves (1x1 convs, priors) run in x's own dtype."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()


def sum_per_sample(t: Tensor) -> Tensor:
    """Sum all but the batch dimension, in float32 or better."""
    return t.to(logdet_dtype(t)).flatten(1).sum(1)


class ZeroConv2d(nn.Conv2d):
    """Convolution (3x3 by default) initialised to output zeros, so a new flow starts near the identity."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)
