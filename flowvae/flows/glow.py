"""Conditional multi-scale Glow: the invertible decoder of flowvae.

``forward(y, z) -> (eps, logdet)`` maps a dequantised image ``y`` (FlowVAE feeds [-0.5, 0.5))
to its local code ``eps``: a tensor of the image's own shape holding the
standardised latents of every level (split-off halves and the top), packed back
to pixel layout by undoing the squeezes. Under the model ``eps ~ N(0, I)``, so

    log p(y | z) = log N(eps; 0, I) + logdet.

Per level: squeeze -> K x [ActNorm -> InvConv1x1 -> AffineCoupling] -> then,
for all but the last level, the second half of the channels is standardised by
a split prior conditioned on the kept half and z and set aside; the last level
is standardised by the top prior conditioned on z. Every coupling network and
every prior sees z (and, if given, a spatial code for its level).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .actnorm import ActNorm
from .base import Cond, FlowLayer, logdet_dtype
from .coupling import AffineCoupling
from .invconv import InvConv1x1
from .priors import GaussianizeSplit, GaussianizeTop, standard_normal_logprob
from .squeeze import squeeze2x2, unsqueeze2x2


class FlowStep(FlowLayer):
    """ActNorm -> invertible 1x1 conv -> affine coupling."""

    def __init__(self, channels: int, hidden: int, cond_dim: int = 0, cond_map_channels: int = 0, clamp: float = 2.0):
        super().__init__()
        self.layers = nn.ModuleList([
            ActNorm(channels),
            InvConv1x1(channels),
            AffineCoupling(channels, hidden, cond_dim, cond_map_channels, clamp),
        ])

    def forward(self, x, cond=None):
        total = 0
        for layer in self.layers:
            x, ld = layer(x, cond)
            total = total + ld
        return x, total

    def inverse(self, y, cond=None):
        total = 0
        for layer in reversed(self.layers):
            y, ld = layer.inverse(y, cond)
            total = total + ld
        return y, total


class ConditionalGlow(nn.Module):
    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int,
        steps: int,
        hidden: int,
        cond_dim: int = 0,
        cond_map_channels: Optional[Sequence[int]] = None,
        clamp: float = 2.0,
    ):
        super().__init__()
        c, h, w = image_shape
        if h % 2**levels or w % 2**levels:
            raise ValueError(f"image size {h}x{w} must be divisible by 2**levels = {2**levels} (levels={levels})")
        maps = list(cond_map_channels) if cond_map_channels is not None else [0] * levels
        if len(maps) != levels:
            raise ValueError("cond_map_channels needs one entry per level")
        self.image_shape = (c, h, w)
        self.levels = levels
        self.level_steps = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.kept_channels: list[int] = []
        for lvl in range(levels):
            c, h, w = c * 4, h // 2, w // 2
            self.level_steps.append(nn.ModuleList([FlowStep(c, hidden, cond_dim, maps[lvl], clamp) for _ in range(steps)]))
            if lvl < levels - 1:
                prior = GaussianizeSplit(c, cond_dim, maps[lvl])
                self.kept_channels.append(prior.ck)
                c = prior.ck
            else:
                prior = GaussianizeTop((c, h, w), cond_dim, maps[lvl])
            self.priors.append(prior)

    @staticmethod
    def _cond(z: Optional[Tensor], maps: Optional[Sequence[Tensor]], lvl: int) -> Cond:
        return Cond(vec=z, map=None if maps is None else maps[lvl])

    def forward(self, y: Tensor, z: Optional[Tensor] = None, maps: Optional[Sequence[Tensor]] = None) -> tuple[Tensor, Tensor]:
        logdet = y.new_zeros(y.shape[0], dtype=logdet_dtype(y))
        parts = []
        h = y
        for lvl in range(self.levels):
            cond = self._cond(z, maps, lvl)
            h = squeeze2x2(h)
            for step in self.level_steps[lvl]:
                h, ld = step(h, cond)
                logdet = logdet + ld
            h, ld = self.priors[lvl](h, cond)
            logdet = logdet + ld
            if lvl < self.levels - 1:
                ck = self.kept_channels[lvl]
                parts.append(h[:, ck:])
                h = h[:, :ck]
        return self._pack(h, parts), logdet

    def inverse(self, eps: Tensor, z: Optional[Tensor] = None, maps: Optional[Sequence[Tensor]] = None) -> tuple[Tensor, Tensor]:
        top, parts = self._unpack(eps)
        logdet = eps.new_zeros(eps.shape[0], dtype=logdet_dtype(eps))
        h = top
        for lvl in reversed(range(self.levels)):
            cond = self._cond(z, maps, lvl)
            if lvl < self.levels - 1:
                h = torch.cat([unsqueeze2x2(h), parts[lvl]], 1)
            h, ld = self.priors[lvl].inverse(h, cond)
            logdet = logdet + ld
            for step in reversed(self.level_steps[lvl]):
                h, ld = step.inverse(h, cond)
                logdet = logdet + ld
        return unsqueeze2x2(h), logdet

    def log_prob(self, y: Tensor, z: Optional[Tensor] = None, maps: Optional[Sequence[Tensor]] = None) -> tuple[Tensor, Tensor]:
        """Returns ``(log p(y | z), eps)``."""
        eps, logdet = self.forward(y, z, maps)
        return standard_normal_logprob(eps) + logdet, eps

    def level_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of the tensor each level's steps act on."""
        c, h, w = self.image_shape
        shapes = []
        for lvl in range(self.levels):
            c, h, w = c * 4, h // 2, w // 2
            shapes.append((c, h, w))
            if lvl < self.levels - 1:
                c = self.kept_channels[lvl]
        return shapes

    # eps packing: undo the squeezes so the local code has the image's shape.
    def _pack(self, top: Tensor, parts: list[Tensor]) -> Tensor:
        g = top
        for lvl in reversed(range(self.levels - 1)):
            g = torch.cat([unsqueeze2x2(g), parts[lvl]], 1)
        return unsqueeze2x2(g)

    def _unpack(self, eps: Tensor) -> tuple[Tensor, list[Tensor]]:
        if tuple(eps.shape[1:]) != self.image_shape:
            raise ValueError(f"eps must have shape [N, {', '.join(map(str, self.image_shape))}], got {list(eps.shape)}")
        g = squeeze2x2(eps)
        parts = []
        for lvl in range(self.levels - 1):
            ck = self.kept_channels[lvl]
            parts.append(g[:, ck:])
            g = squeeze2x2(g[:, :ck])
        return g, parts
