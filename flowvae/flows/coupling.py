"""Conditional affine coupling (Glow/RealNVP) with the global code in its network.

The first half of the channels, ``xa``, passes unchanged and (with the
conditioning) predicts a shift and a log-scale for the second half ``xb``:
``yb = (xb + shift) * exp(log_s)``. The log-scale is soft-clamped,
``log_s = c * tanh(raw / c)``, so a zero-initialised last layer makes the
coupling the identity and no step can blow up by more than ``exp(c)``.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from .base import Cond, FlowLayer, ZeroConv2d, sum_per_sample


class CouplingNet(nn.Module):
    """conv3x3 -> ReLU -> conv1x1 -> ReLU -> zero-init conv3x3.

    A global code enters as a per-channel bias after the first convolution
    (a linear projection of z, as in Wolf); a spatial code is concatenated to
    the input.
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, cond_dim: int = 0, cond_map_channels: int = 0):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels + cond_map_channels, hidden, 3, padding=1)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.out = ZeroConv2d(hidden, out_channels)
        self.cond_proj = nn.Linear(cond_dim, hidden) if cond_dim > 0 else None
        self.cond_map_channels = cond_map_channels
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: Tensor, cond: Optional[Cond]) -> Tensor:
        if self.cond_map_channels:
            if cond is None or cond.map is None:
                raise ValueError("this coupling expects a spatial conditioning map (cond.map)")
            x = torch.cat([x, cond.map.to(x.dtype)], 1)
        h = self.conv1(x)
        if self.cond_proj is not None:
            if cond is None or cond.vec is None:
                raise ValueError("this coupling expects a global code (cond.vec)")
            h = h + self.cond_proj(cond.vec.to(h.dtype))[:, :, None, None]
        h = self.act(h)
        h = self.act(self.conv2(h))
        return self.out(h)


class AffineCoupling(FlowLayer):
    def __init__(self, channels: int, hidden: int, cond_dim: int = 0, cond_map_channels: int = 0, clamp: float = 2.0):
        super().__init__()
        self.ca = channels // 2
        self.cb = channels - self.ca
        self.net = CouplingNet(self.ca, 2 * self.cb, hidden, cond_dim, cond_map_channels)
        self.clamp = clamp

    def _params(self, xa: Tensor, cond: Optional[Cond]) -> tuple[Tensor, Tensor]:
        h = self.net(xa, cond)
        shift, raw = h[:, 0::2], h[:, 1::2]
        # Scales and their log-det in float32 even if the network ran in bf16.
        raw = raw.to(torch.float64 if xa.dtype == torch.float64 else torch.float32)
        log_s = self.clamp * torch.tanh(raw / self.clamp)
        return shift, log_s

    def forward(self, x: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        xa, xb = x[:, : self.ca], x[:, self.ca :]
        shift, log_s = self._params(xa, cond)
        yb = ((xb + shift) * torch.exp(log_s)).to(x.dtype)
        return torch.cat([xa, yb], 1), sum_per_sample(log_s)

    def inverse(self, y: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        ya, yb = y[:, : self.ca], y[:, self.ca :]
        shift, log_s = self._params(ya, cond)
        xb = (yb * torch.exp(-log_s) - shift).to(y.dtype)
        return torch.cat([ya, xb], 1), -sum_per_sample(log_s)
