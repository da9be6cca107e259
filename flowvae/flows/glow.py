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

With ``zmap_channels > 0`` a small decoder (:class:`ZMapDecoder`) also turns z into a spatial map
at every level's resolution, which every coupling (as a per-pixel bias) and prior (as an input)
reads: z then has a direct route to *where* things are, not only to per-channel statistics.
``steps`` and ``kernels`` may differ per level (finest first), to limit what the flow can model
on its own at the coarse levels.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .actnorm import ActNorm
from .base import Cond, FlowLayer, logdet_dtype
from .coupling import AffineCoupling
from .invconv import InvConv1x1
from .priors import GaussianizeSplit, GaussianizeTop
from .tails import base_density
from .recompute import MEMORY_MODES, run_steps
from .squeeze import squeeze2x2, unsqueeze2x2


class FlowStep(FlowLayer):
    """ActNorm -> invertible 1x1 conv -> affine coupling."""

    def __init__(self, channels: int, hidden: int, cond_dim: int = 0, cond_map_channels: int = 0, clamp: float = 2.0,
                 zmap_channels: int = 0, kernel: int = 3, shift_clamp: float = 0.0, scale: str = "tanh"):
        super().__init__()
        self.layers = nn.ModuleList([
            ActNorm(channels),
            InvConv1x1(channels),
            AffineCoupling(channels, hidden, cond_dim, cond_map_channels, clamp, zmap_channels, kernel, shift_clamp,
                           scale),
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


class ZMapDecoder(nn.Module):
    """z -> one spatial map per Glow level (finest first): a linear map to the coarsest level's grid,
    then per finer level a 2x nearest upsampling and a 3x3 conv, each followed by SiLU."""

    def __init__(self, z_dim: int, channels: int, sizes: Sequence[tuple[int, int]]):
        super().__init__()
        self.sizes = [tuple(s) for s in sizes]
        self.channels = channels
        hc, wc = self.sizes[-1]
        self.fc = nn.Linear(z_dim, channels * hc * wc)
        self.ups = nn.ModuleList([nn.Conv2d(channels, channels, 3, padding=1) for _ in self.sizes[:-1]])

    def forward(self, z: Tensor) -> list[Tensor]:
        hc, wc = self.sizes[-1]
        m = F.silu(self.fc(z).view(z.shape[0], self.channels, hc, wc))
        maps = [m]
        for lvl in reversed(range(len(self.sizes) - 1)):
            m = F.silu(self.ups[lvl](F.interpolate(m, size=self.sizes[lvl], mode="nearest")))
            maps.append(m)
        return maps[::-1]


def _per_level(value: Union[int, Sequence[int]], levels: int, name: str) -> list[int]:
    vals = [value] * levels if isinstance(value, int) else list(value)
    if len(vals) != levels:
        raise ValueError(f"{name} needs one entry per level ({levels}), got {vals}")
    return vals


class ConditionalGlow(nn.Module):
    def __init__(
        self,
        image_shape: Sequence[int],
        levels: int,
        steps: Union[int, Sequence[int]],
        hidden: int,
        cond_dim: int = 0,
        cond_map_channels: Optional[Sequence[int]] = None,
        clamp: float = 2.0,
        zmap_channels: int = 0,
        kernels: Union[int, Sequence[int]] = 3,
        shift_clamp: float = 0.0,
        coupling_scale: str = "tanh",
        split_reads_kept: bool = True,
        base_tail: float = 0.0,
    ):
        super().__init__()
        c, h, w = image_shape
        if h % 2**levels or w % 2**levels:
            raise ValueError(f"image size {h}x{w} must be divisible by 2**levels = {2**levels} (levels={levels})")
        maps = list(cond_map_channels) if cond_map_channels is not None else [0] * levels
        if len(maps) != levels:
            raise ValueError("cond_map_channels needs one entry per level")
        steps, kernels = _per_level(steps, levels, "steps"), _per_level(kernels, levels, "kernels")
        if zmap_channels and not cond_dim:
            raise ValueError("zmap_channels needs a global code (cond_dim > 0)")
        self.image_shape = (c, h, w)
        self.levels = levels
        self.base = base_density(base_tail)  # what eps is scored under and drawn from (tails.py)
        self.level_steps = nn.ModuleList()
        self.priors = nn.ModuleList()
        self.kept_channels: list[int] = []
        sizes = []
        for lvl in range(levels):
            c, h, w = c * 4, h // 2, w // 2
            sizes.append((h, w))
            k, zc = kernels[lvl], zmap_channels
            self.level_steps.append(nn.ModuleList([FlowStep(c, hidden, cond_dim, maps[lvl], clamp, zc, k, shift_clamp,
                                                            coupling_scale)
                                                   for _ in range(steps[lvl])]))
            if lvl < levels - 1:
                prior = GaussianizeSplit(c, cond_dim, maps[lvl], zc, k, read_kept=split_reads_kept)
                self.kept_channels.append(prior.ck)
                c = prior.ck
            else:
                prior = GaussianizeTop((c, h, w), cond_dim, maps[lvl], zc)
            self.priors.append(prior)
        self.z_decoder = ZMapDecoder(cond_dim, zmap_channels, sizes) if zmap_channels else None
        self.memory = "standard"  # train.memory: how the steps' activations are kept for backprop (recompute.py)

    def set_memory(self, memory: str) -> None:
        if memory not in MEMORY_MODES:
            raise ValueError(f"memory must be one of {MEMORY_MODES}, got {memory!r}")
        self.memory = memory

    def set_coupling_impl(self, impl: str) -> None:
        """auto | gemm | conv for every coupling network (see CouplingNet); the weights do not change."""
        from .coupling import COUPLING_IMPLS, CouplingNet

        if impl not in COUPLING_IMPLS:
            raise ValueError(f"coupling_impl must be one of {COUPLING_IMPLS}, got {impl!r}")
        for m in self.modules():
            if isinstance(m, CouplingNet):
                m.impl = impl

    def _conds(self, z: Optional[Tensor], maps: Optional[Sequence[Tensor]]) -> list[Cond]:
        """The conditioning of each level (z decoded to its maps once per pass)."""
        zmaps = self.z_decoder(z) if self.z_decoder is not None else [None] * self.levels
        return [Cond(vec=z, map=None if maps is None else maps[lvl], zmap=zmaps[lvl]) for lvl in range(self.levels)]

    def forward(self, y: Tensor, z: Optional[Tensor] = None, maps: Optional[Sequence[Tensor]] = None) -> tuple[Tensor, Tensor]:
        logdet = y.new_zeros(y.shape[0], dtype=logdet_dtype(y))
        parts = []
        h = y
        conds = self._conds(z, maps)
        for lvl in range(self.levels):
            cond = conds[lvl]
            h = squeeze2x2(h)
            h, ld = run_steps(self.level_steps[lvl], h, cond, self.memory)
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
        conds = self._conds(z, maps)
        for lvl in reversed(range(self.levels)):
            cond = conds[lvl]
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
        return self.base.log_prob(eps) + logdet, eps

    def level_shapes(self) -> list[tuple[int, int, int]]:
        """(C, H, W) of the tensor each level's steps act on."""
        return self.shapes_of(self.image_shape, self.levels)

    @staticmethod
    def shapes_of(image_shape: Sequence[int], levels: int) -> list[tuple[int, int, int]]:
        """(C, H, W) each level acts on, for an image shape: squeeze, then keep half the channels (floor)
        after every split (GaussianizeSplit.ck)."""
        c, h, w = image_shape
        shapes = []
        for lvl in range(levels):
            c, h, w = c * 4, h // 2, w // 2
            shapes.append((c, h, w))
            c = c // 2
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
