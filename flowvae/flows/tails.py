"""The density the Glow scores its code eps under: N(0, I), or the same with linear (Laplace) tails.

With a Gaussian base, a dimension whose eps lands far out costs eps^2 / 2 nats, and the cost moves with
eps * d(eps): on an image the model fits badly (eps in the hundreds at a split whose predicted scale is
tiny) the bound then swings by tens of bits/dim with the draw of the code, because every draw moves eps a
little and the square multiplies that by eps. ``HuberNormal(k)`` keeps the normal density for |eps| <= k
and continues it with the tangent of its log beyond, ``log p(e) = -k|e| + k^2/2 - log Z`` (continuous
with a continuous first derivative), so no dimension's cost can change faster than k per unit of eps.
For k = 4 the normaliser differs from the normal's by 7e-5 nats per dimension, so images whose eps stay
inside |eps| <= k score as before. Heavy-tailed bases for flows: "Tails of Lipschitz Triangular Flows"
(Jaini, Kobyzev, Yu and Brubaker, 2020).

Each class scores (``log_prob``: one value per sample, float32 or better) and draws (``sample``).
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..gaussian import normal_log_prob


class StandardNormal:
    """N(0, I): the Glow's usual base."""

    tail = 0.0

    def log_prob(self, eps: Tensor) -> Tensor:
        return normal_log_prob(eps)

    def sample(self, shape: Sequence[int], device=None, generator: Optional[torch.Generator] = None) -> Tensor:
        return torch.randn(tuple(shape), device=device, generator=generator)

    def __repr__(self) -> str:
        return "StandardNormal()"


class HuberNormal:
    """Per dimension ``p(e) = exp(-rho_k(e)) / Z_k`` with ``rho_k(e) = e^2 / 2`` for |e| <= k and
    ``k|e| - k^2 / 2`` beyond; ``Z_k = sqrt(2 pi) erf(k / sqrt 2) + 2 exp(-k^2 / 2) / k``."""

    def __init__(self, k: float):
        if not k > 0:
            raise ValueError(f"the tail threshold k must be > 0, got {k}")
        self.tail = float(k)
        core = math.sqrt(2 * math.pi) * math.erf(k / math.sqrt(2))  # mass of exp(-e^2/2) on [-k, k]
        side = math.exp(-k * k / 2) / k  # mass of one exponential tail
        self.log_z = math.log(core + 2 * side)
        self.p_tail = 2 * side / (core + 2 * side)

    def log_prob(self, eps: Tensor) -> Tensor:
        e = eps if eps.dtype in (torch.float32, torch.float64) else eps.float()
        a = e.abs()
        k = self.tail
        rho = torch.where(a <= k, 0.5 * e * e, k * a - 0.5 * k * k)
        return -(rho.flatten(1).sum(1) + e[0].numel() * self.log_z)

    def sample(self, shape: Sequence[int], device=None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Exact draws: with probability 1 - p_tail a normal truncated to [-k, k] (inverse CDF), else
        k + Exp(rate k) with a random sign."""
        shape = tuple(shape)
        k = self.tail
        u = torch.rand((3, *shape), device=device, generator=generator, dtype=torch.float64)
        lo = 0.5 * math.erfc(k / math.sqrt(2))  # Phi(-k)
        core = torch.special.ndtri(lo + (1 - 2 * lo) * u[0])
        tail = k - torch.log1p(-u[1]) / k
        sign = torch.where(u[2] < 0.5, -1.0, 1.0).to(torch.float64)
        in_tail = torch.rand(shape, device=device, generator=generator, dtype=torch.float64) < self.p_tail
        return torch.where(in_tail, sign * tail, core).float()

    def __repr__(self) -> str:
        return f"HuberNormal(k={self.tail:g})"


def base_density(tail: float):
    """``model.base_tail``: 0 gives N(0, I), k > 0 the normal with linear tails beyond |eps| = k."""
    return StandardNormal() if tail == 0 else HuberNormal(tail)
