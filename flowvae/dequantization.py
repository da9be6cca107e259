"""Dequantisation q(u | x) on [0, 1)^D: uniform, or variational (Flow++).

Each dequantiser returns ``(u, log_q)`` with ``log_q = log q(u | x)`` per
image (float32). ``deterministic=True`` gives the centre of the bin, u = 1/2,
which ``encode`` uses so that ``decode(encode(x)) == x`` exactly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .flows import AffineCoupling, Cond, InvConv1x1, standard_normal_logprob
from .flows.squeeze import squeeze2x2, unsqueeze2x2


class UniformDequantizer(nn.Module):
    def forward(self, x_scaled: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        u = torch.full_like(x_scaled, 0.5) if deterministic else torch.rand_like(x_scaled)
        return u, x_scaled.new_zeros(x_scaled.shape[0], dtype=torch.float32)


class VariationalDequantizer(nn.Module):
    """u = sigmoid(g(e; x)), e ~ N(0, I), g a small conditional flow on the squeezed image.

    log q(u|x) = log N(e) - log|det dg/de| - sum log sigmoid'(v),  v = g(e; x).
    """

    def __init__(self, channels: int, layers: int = 4, hidden: int = 32, context: int = 16):
        super().__init__()
        c4 = 4 * channels
        self.context_net = nn.Sequential(
            nn.Conv2d(c4, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, hidden, 3, padding=1), nn.SiLU(),
            nn.Conv2d(hidden, context, 3, padding=1),
        )
        self.flows = nn.ModuleList()
        for _ in range(layers):
            self.flows.append(InvConv1x1(c4))
            self.flows.append(AffineCoupling(c4, hidden, cond_map_channels=context))

    def forward(self, x_scaled: Tensor, deterministic: bool = False) -> tuple[Tensor, Tensor]:
        if deterministic:
            return torch.full_like(x_scaled, 0.5), x_scaled.new_zeros(x_scaled.shape[0], dtype=torch.float32)
        cond = Cond(map=self.context_net(squeeze2x2(x_scaled)))
        e = torch.randn_like(squeeze2x2(x_scaled))
        log_q = standard_normal_logprob(e)
        v = e
        for f in self.flows:
            v, ld = f(v, cond)
            log_q = log_q - ld
        v = unsqueeze2x2(v)
        log_sig_deriv = F.logsigmoid(v) + F.logsigmoid(-v)
        log_q = log_q - log_sig_deriv.float().flatten(1).sum(1)
        return torch.sigmoid(v), log_q
