"""Hierarchical latent injection (the research idea of section 6 and Figure 5 of G. Gupta, "Autoencoders", IIT Delhi report).

With ``model.injection: hierarchical`` every Glow level l gets its own small
spatial stochastic latent ``z_l`` of shape [hier_channels, H_l, W_l], at the
resolution that level acts on (H_l = H / 2^(l+1)), next to the global z:

- posterior ``q(z_l | x) = N(mu_l, sigma_l)`` from the encoder's feature map at
  that resolution (``Encoder.features`` is keyed by height);
- prior ``p(z_l)``: N(0, I) (``hier_prior: normal``), or top-down
  (``hier_prior: topdown``) ``p(z_l | z_{l+1})`` for l < L-1 and
  ``p(z_{L-1} | z)`` for the coarsest, each a diagonal Gaussian whose
  parameters start at N(0, I) (zero-initialised heads);
- the Glow level l sees ``z_l`` as a spatial condition (concatenated to its
  coupling networks' input and to its split / top prior's input).

The model keeps every latent in one flat *code* vector ``[z, z_0, ..., z_{L-1}]``
(z_l flattened), so the posterior is one diagonal Gaussian over the code and
``encode`` / ``decode`` / ``swap`` / the importance-weighted bound need no
special case. This module only splits that vector and scores / draws the
level latents. The ELBO's KL is ``KL_global + sum_l KL_l``; with a top-down
prior KL_l is the analytic Gaussian KL given the drawn parents (a valid
single-sample estimate of E_q[KL]).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from .flows.base import ZeroConv2d, full_precision
from .objective import gaussian_kl, gaussian_log_prob

LOG_SIGMA_RANGE = (-10.0, 5.0)


class HierarchicalLatents(nn.Module):
    """Posterior heads, priors and bookkeeping of the per-level latents z_l.

    ``shapes[l] = (C_l, H_l, W_l)`` of z_l; ``feature_channels`` the encoder width.
    """

    def __init__(self, shapes: Sequence[tuple[int, int, int]], feature_channels: int, z_dim: int,
                 prior: str = "normal", hidden: int = 32):
        super().__init__()
        if prior not in ("normal", "topdown"):
            raise ValueError(f"hier_prior must be 'normal' or 'topdown', got {prior!r}")
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [c * h * w for c, h, w in self.shapes]
        self.dim = sum(self.sizes)
        self.levels = len(self.shapes)
        self.topdown = prior == "topdown"
        self.heads = nn.ModuleList([
            nn.Sequential(nn.SiLU(), nn.Conv2d(feature_channels, 2 * c, 3, padding=1)) for c, _, _ in self.shapes
        ])
        for head in self.heads:  # start with q(z_l|x) close to N(0, I) but not blind to x
            nn.init.normal_(head[1].weight, std=1e-3)
            nn.init.zeros_(head[1].bias)
        if self.topdown:
            # p(z_l | z_{l+1}) for l < L-1: small conv net on the 2x-upsampled parent; zero last layer -> N(0, I).
            self.td_nets = nn.ModuleList()
            for lvl in range(self.levels - 1):
                c_parent, c = self.shapes[lvl + 1][0], self.shapes[lvl][0]
                self.td_nets.append(nn.Sequential(
                    nn.Conv2d(c_parent, hidden, 3, padding=1), nn.SiLU(), ZeroConv2d(hidden, 2 * c)))
            # p(z_{L-1} | z): a linear map of the global code.
            self.td_top = nn.Linear(z_dim, 2 * self.sizes[-1])
            nn.init.zeros_(self.td_top.weight)
            nn.init.zeros_(self.td_top.bias)

    # ------------------------------------------------------------- layout
    def split(self, flat: Tensor) -> list[Tensor]:
        """[N, dim] -> list of [N, C_l, H_l, W_l] (views)."""
        if flat.shape[1] != self.dim:
            raise ValueError(f"level code must have {self.dim} entries per image, got {flat.shape[1]}")
        parts = flat.split(self.sizes, dim=1)
        return [p.reshape(flat.shape[0], *s) for p, s in zip(parts, self.shapes)]

    @staticmethod
    def join(levels: Sequence[Tensor]) -> Tensor:
        return torch.cat([z.flatten(1) for z in levels], 1)

    def offsets(self, level: int) -> slice:
        """Where level ``level`` lives inside the flat level code."""
        start = sum(self.sizes[:level])
        return slice(start, start + self.sizes[level])

    # ---------------------------------------------------------- posterior
    def posterior(self, feats: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        """Flat (mu, log_sigma) of q(z_0..z_{L-1} | x), float32."""
        mus, lss = [], []
        for (c, h, _), head in zip(self.shapes, self.heads):
            if h not in feats:
                raise ValueError(f"the encoder has no feature map at height {h} (has {sorted(feats)})")
            mu, ls = head(feats[h]).float().chunk(2, dim=1)
            mus.append(mu)
            lss.append(ls.clamp(*LOG_SIGMA_RANGE))
        return self.join(mus), self.join(lss)

    # -------------------------------------------------------------- prior
    def level_prior(self, lvl: int, levels: Sequence[Optional[Tensor]], z: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """(mu, log_sigma) of p(z_lvl | parents); only the parent (levels[lvl + 1], or z for the
        coarsest level) is read. The standard-normal prior gives zeros."""
        n, shape = (z.shape[0] if z is not None else levels[lvl].shape[0]), self.shapes[lvl]
        device = z.device if z is not None else levels[lvl].device
        if not self.topdown:
            zero = torch.zeros(n, *shape, device=device)
            return zero, zero
        with full_precision(z if z is not None else levels[lvl]):  # priors stay float32 under autocast
            if lvl < self.levels - 1:
                parent = nn.functional.interpolate(levels[lvl + 1].float(), size=shape[1:], mode="nearest")
                mu, ls = self.td_nets[lvl](parent).float().chunk(2, dim=1)
            else:
                mu, ls = self.td_top(z.float()).float().view(n, 2 * shape[0], *shape[1:]).chunk(2, dim=1)
        return mu, ls.clamp(*LOG_SIGMA_RANGE)

    def kl_and_log_p(self, mu_q: Tensor, ls_q: Tensor, sample: Tensor, z: Optional[Tensor]) -> tuple[Tensor, Tensor, list[Tensor]]:
        """Per-level KL [N, L] (analytic given the drawn parents), log p(sample) [N] in nats, and each
        level's KL per dimension ([N, C_l*H_l*W_l], for free bits)."""
        mq, lq, s = self.split(mu_q), self.split(ls_q), self.split(sample)
        kl_dims, log_p = [], 0.0
        for lvl, (m, l, x) in enumerate(zip(mq, lq, s)):
            mp, lp = self.level_prior(lvl, s, z)
            kl_dims.append(gaussian_kl(m, l, mp, lp).flatten(1))
            log_p = log_p + gaussian_log_prob(x.flatten(1), mp.flatten(1), lp.flatten(1))
        return torch.stack([k.sum(1) for k in kl_dims], 1), log_p, kl_dims

    def sample(self, z: Tensor, temperature: float = 1.0, fixed: Optional[Sequence[Optional[Tensor]]] = None,
               noise: Optional[Sequence[Optional[Tensor]]] = None, generator: Optional[torch.Generator] = None) -> list[Tensor]:
        """Ancestral draw, coarsest level first. ``fixed[l]`` (if not None) is kept as it is;
        ``noise[l]`` (if given) replaces the standard-normal draw of level l."""
        n = z.shape[0]
        levels: list[Optional[Tensor]] = [None] * self.levels
        for lvl in reversed(range(self.levels)):
            if fixed is not None and fixed[lvl] is not None:
                levels[lvl] = fixed[lvl].float()
                continue
            shape = (n, *self.shapes[lvl])
            e = noise[lvl] if noise is not None and noise[lvl] is not None else \
                torch.randn(shape, device=z.device, generator=generator)
            mu, ls = self.level_prior(lvl, levels, z)
            levels[lvl] = mu + torch.exp(ls) * temperature * e
        return levels  # type: ignore[return-value]
