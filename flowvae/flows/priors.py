"""Learned Gaussian priors of the multi-scale Glow, written as flow layers.

Scoring ``h`` under ``N(mu, sigma^2)`` equals standardising it,
``eps = (h - mu) / sigma`` (log-det ``-sum log sigma``), then scoring ``eps``
under ``N(0, I)`` (or the base with linear tails of tails.py, ``model.base_tail``). Writing the priors this way makes the whole Glow one
bijection ``y -> eps`` whose log-det tests can check, and makes ``eps`` the
local code: decoding keeps ``eps`` and recomputes ``mu, sigma`` from the new
global code, which is what a swap needs.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..gaussian import normal_log_prob as standard_normal_logprob  # noqa: F401  (per-sample log N(eps; 0, I))
from .base import Cond, FlowLayer, ZeroConv2d, full_precision, logdet_dtype, sum_per_sample


def _as_float(t: Tensor, like: Tensor) -> Tensor:
    return t.to(logdet_dtype(like))


def _need(cond: Optional[Cond], vec: bool, maps: bool, who: str, zmap: bool = False) -> None:
    if vec and (cond is None or cond.vec is None):
        raise ValueError(f"{who} expects a global code (cond.vec)")
    if maps and (cond is None or cond.map is None):
        raise ValueError(f"{who} expects a spatial conditioning map (cond.map)")
    if zmap and (cond is None or cond.zmap is None):
        raise ValueError(f"{who} expects a spatial map decoded from z (cond.zmap)")


def _spatial(cond: Optional[Cond], maps: bool, zmap: bool, dtype: torch.dtype) -> list[Tensor]:
    """The spatial conditioning a prior reads: the level code and/or the map decoded from z."""
    return ([cond.map.to(dtype)] if maps else []) + ([cond.zmap.to(dtype)] if zmap else [])


class GaussianizeSplit(FlowLayer):
    """Standardise the second half of the channels given the first half and the conditioning.

    ``[kept, split] -> [kept, (split - mu) / sigma]`` with
    ``mu, log sigma = ZeroConv(kept [, cond map] [, z map]) + Linear(z)``; ``kernel`` is the conv's size
    (1 keeps the prior as local as kernel-1 couplings).

    ``read_kept=False`` drops ``kept`` from the conv's input: the split half's mean and scale then come from
    the codes alone (the level code z_l and/or the map decoded from z, plus z), so whatever of the
    factored-out half the flow could have predicted from the kept half must come through the code instead
    (the argument of "Learning Hierarchical Features from Generative Models", Zhao, Song and Ermon, 2017).
    The log-det is unchanged, ``-sum log sigma``, and the layer still inverts exactly.
    """

    def __init__(self, channels: int, cond_dim: int = 0, cond_map_channels: int = 0, zmap_channels: int = 0,
                 kernel: int = 3, read_kept: bool = True):
        super().__init__()
        if not read_kept and not cond_map_channels + zmap_channels:
            raise ValueError("a split prior that does not read the kept half needs a spatial code "
                             "(cond_map_channels or zmap_channels > 0)")
        self.ck = channels // 2
        self.cs = channels - self.ck
        self.read_kept = read_kept
        self.conv = ZeroConv2d(self.ck * read_kept + cond_map_channels + zmap_channels, 2 * self.cs, kernel)
        self.cond_map_channels = cond_map_channels
        self.zmap_channels = zmap_channels
        self.cond_proj = nn.Linear(cond_dim, 2 * self.cs) if cond_dim > 0 else None
        if self.cond_proj is not None:
            nn.init.zeros_(self.cond_proj.weight)
            nn.init.zeros_(self.cond_proj.bias)

    def _params(self, kept: Tensor, cond: Optional[Cond]) -> tuple[Tensor, Tensor]:
        with full_precision(kept):  # the prior's mean and scale stay float32 under autocast
            return self._params_fp(kept, cond)

    def _params_fp(self, kept: Tensor, cond: Optional[Cond]) -> tuple[Tensor, Tensor]:
        _need(cond, self.cond_proj is not None, bool(self.cond_map_channels), "this split prior", bool(self.zmap_channels))
        codes = _spatial(cond, bool(self.cond_map_channels), bool(self.zmap_channels), kept.dtype)
        inp = torch.cat(([kept] if self.read_kept else []) + codes, 1)
        h = self.conv(inp)
        if self.cond_proj is not None:
            h = h + self.cond_proj(cond.vec.to(h.dtype))[:, :, None, None]
        h = _as_float(h, kept)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        kept, split = x[:, : self.ck], x[:, self.ck :]
        mu, log_sigma = self._params(kept, cond)
        eps = ((split - mu) * torch.exp(-log_sigma)).to(x.dtype)
        return torch.cat([kept, eps], 1), -sum_per_sample(log_sigma)

    def inverse(self, y: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        kept, eps = y[:, : self.ck], y[:, self.ck :]
        mu, log_sigma = self._params(kept, cond)
        split = (eps * torch.exp(log_sigma) + mu).to(y.dtype)
        return torch.cat([kept, split], 1), sum_per_sample(log_sigma)


class GaussianizeTop(FlowLayer):
    """Standardise the top-level latent: ``mu, log sigma`` = learned map + Linear(z) (+ ZeroConv(map, z map))."""

    def __init__(self, shape: tuple[int, int, int], cond_dim: int = 0, cond_map_channels: int = 0, zmap_channels: int = 0):
        super().__init__()
        c, h, w = shape
        self.shape = shape
        self.learned = nn.Parameter(torch.zeros(1, 2 * c, h, w))
        self.cond_proj = nn.Linear(cond_dim, 2 * c * h * w) if cond_dim > 0 else None
        if self.cond_proj is not None:
            nn.init.zeros_(self.cond_proj.weight)
            nn.init.zeros_(self.cond_proj.bias)
        self.cond_map_channels, self.zmap_channels = cond_map_channels, zmap_channels
        self.map_conv = ZeroConv2d(cond_map_channels + zmap_channels, 2 * c) if cond_map_channels + zmap_channels else None

    def _params(self, x: Tensor, cond: Optional[Cond]) -> tuple[Tensor, Tensor]:
        with full_precision(x):  # the prior's mean and scale stay float32 under autocast
            return self._params_fp(x, cond)

    def _params_fp(self, x: Tensor, cond: Optional[Cond]) -> tuple[Tensor, Tensor]:
        _need(cond, self.cond_proj is not None, bool(self.cond_map_channels), "this top prior", bool(self.zmap_channels))
        h = self.learned.expand(x.shape[0], -1, -1, -1)
        if self.cond_proj is not None:
            h = h + self.cond_proj(cond.vec.to(h.dtype)).view(-1, *self.learned.shape[1:])
        if self.map_conv is not None:
            h = h + self.map_conv(torch.cat(_spatial(cond, bool(self.cond_map_channels), bool(self.zmap_channels), h.dtype), 1))
        h = _as_float(h, x)
        return h[:, 0::2], h[:, 1::2]

    def forward(self, x: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(x, cond)
        return ((x - mu) * torch.exp(-log_sigma)).to(x.dtype), -sum_per_sample(log_sigma)

    def inverse(self, y: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        mu, log_sigma = self._params(y, cond)
        return (y * torch.exp(log_sigma) + mu).to(y.dtype), sum_per_sample(log_sigma)
