"""Hierarchical latent injection (the research idea of section 6 and Figure 5 of G. Gupta, "Autoencoders", IIT Delhi report).

With ``model.injection: hierarchical`` every Glow level l gets its own small spatial latent ``z_l`` of
shape [hier_channels, H_l, W_l], at the resolution that level acts on (H_l = H / 2^(l+1)), next to the
global z. Each is one ``LevelCode`` module that owns

- its posterior ``q(z_l | x) = N(mu_l, sigma_l)``: a conv head on the encoder's feature map at that
  resolution;
- its prior: N(0, I) (``hier_prior: normal``), or top-down (``hier_prior: topdown``) ``p(z_l | z_{l+1})``
  for l < L-1 (a small conv net on the 2x-upsampled parent) and ``p(z_{L-1} | z)`` for the coarsest (a
  linear map of the global code), each a diagonal Gaussian that starts at N(0, I) (zero-initialised);
- its conditioning role: the Glow level l sees ``z_l`` as a spatial map, concatenated to its coupling
  networks' input and to its split / top prior's input.

The posterior of z_l reads x alone (``hier_posterior: bottomup``), or, as in "Ladder Variational
Autoencoders" (Sonderby, Raiko, Maaloe, Sonderby and Winther), merges that bottom-up Gaussian with the
top-down prior given the drawn parent by precision weighting (``hier_posterior: ladder``):
q(z_l | x, z_{l+1}) = N(mu, sigma^2) with 1/sigma^2 = 1/sigma_x^2 + 1/sigma_p^2 and
mu = sigma^2 (mu_x / sigma_x^2 + mu_p / sigma_p^2), so the posterior moves with the parent as the prior does.

The ELBO's KL is ``KL_global + sum_l KL_l``; with a top-down prior KL_l is the analytic Gaussian KL given
the drawn parent (a valid single-sample estimate of E_q[KL]).

``hier_prior_min_log_sigma`` floors log sigma of each top-down prior. Under the ladder posterior a prior
that grows sharp lets q take its scale at no KL cost, so z_l becomes a near-deterministic function of its
parent; the floor keeps every level's prior at least that wide, so whatever z_l adds must be paid in KL.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..flows.base import ZeroConv2d, full_precision
from .base import LOG_SIGMA_RANGE, LatentGroup, Latents, StandardNormalKL
from .global_code import build_encoder, global_code


class LevelCode(LatentGroup):
    """The spatial latent z_l of Glow level ``level``: shape (C, H_l, W_l)."""

    role = "map"

    def __init__(self, level: int, shape: tuple[int, int, int], feature_channels: int, parent: Optional[str] = None,
                 parent_shape: Optional[tuple] = None, hidden: int = 32, prior_min_log_sigma: float = LOG_SIGMA_RANGE[0]):
        super().__init__()
        self.level = level
        self.prior_log_sigma_range = (max(prior_min_log_sigma, LOG_SIGMA_RANGE[0]), LOG_SIGMA_RANGE[1])
        self.shape = tuple(shape)
        self.parent = parent
        c = shape[0]
        self.head = nn.Sequential(nn.SiLU(), nn.Conv2d(feature_channels, 2 * c, 3, padding=1))
        nn.init.normal_(self.head[1].weight, std=1e-3)  # q(z_l|x) starts close to N(0, I) but not blind to x
        nn.init.zeros_(self.head[1].bias)
        self.prior_net = None
        if parent_shape is not None and len(parent_shape) == 3:  # p(z_l | z_{l+1}): conv net on the upsampled parent
            self.prior_net = nn.Sequential(nn.Conv2d(parent_shape[0], hidden, 3, padding=1), nn.SiLU(), ZeroConv2d(hidden, 2 * c))
        elif parent_shape is not None:  # p(z_{L-1} | z): a linear map of the global code
            self.prior_net = nn.Linear(parent_shape[0], 2 * self.size)
            nn.init.zeros_(self.prior_net.weight)
            nn.init.zeros_(self.prior_net.bias)

    def posterior(self, feats: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        h = self.shape[1]
        if h not in feats:
            raise ValueError(f"the encoder has no feature map at height {h} (has {sorted(feats)})")
        mu, ls = self.head(feats[h]).float().chunk(2, dim=1)
        return mu, ls.clamp(*LOG_SIGMA_RANGE)

    def prior_params(self, parent: Optional[Tensor], n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        if self.prior_net is None:
            zero = torch.zeros(n, *self.shape, device=device)
            return zero, zero
        with full_precision(parent):  # priors stay float32 under autocast
            if parent.dim() == 4:
                up = nn.functional.interpolate(parent.float(), size=self.shape[1:], mode="nearest")
                mu, ls = self.prior_net(up).float().chunk(2, dim=1)
            else:
                mu, ls = self.prior_net(parent.float()).float().view(n, 2 * self.shape[0], *self.shape[1:]).chunk(2, dim=1)
        return mu, ls.clamp(*self.prior_log_sigma_range)


class NormalLevelCode(StandardNormalKL, LevelCode):
    """A level latent with prior N(0, I)."""


class LadderLevelCode(LevelCode):
    """A level latent whose posterior is the precision-weighted merge of the bottom-up Gaussian that
    ``posterior`` returns and its prior given the drawn parent (Ladder VAE)."""

    def given_parent(self, mu: Tensor, log_sigma: Tensor, parent: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        mp, lp = self.prior_params(parent, mu.shape[0], mu.device)
        w = torch.sigmoid(2 * (lp - log_sigma))  # the bottom-up share of the precision, 1/sx^2 / (1/sx^2 + 1/sp^2)
        ls = -0.5 * torch.logaddexp(-2 * log_sigma, -2 * lp)
        return w * mu + (1 - w) * mp, ls.clamp(*LOG_SIGMA_RANGE)


class HierarchicalLatents(Latents):
    """``injection: hierarchical``: z plus a spatial z_l per Glow level (finest first in the layout)."""

    kind = "hierarchical"

    @staticmethod
    def condition_shapes(cfg):
        return cfg.z_dim, [cfg.hier_channels] * cfg.levels

    def __init__(self, cfg, image_shape, level_shapes):
        encoder = build_encoder(cfg, image_shape)
        groups: dict = {"global": global_code(cfg, encoder)}
        shapes = [(cfg.hier_channels, h, w) for _, h, w in level_shapes]
        topdown = cfg.hier_prior == "topdown"
        for lvl, shape in enumerate(shapes):
            if not topdown:
                groups[f"level{lvl}"] = NormalLevelCode(lvl, shape, encoder.width)
                continue
            coarsest = lvl == len(shapes) - 1
            parent = "global" if coarsest else f"level{lvl + 1}"
            parent_shape = (cfg.z_dim,) if coarsest else shapes[lvl + 1]
            group = LadderLevelCode if cfg.hier_posterior == "ladder" else LevelCode
            groups[f"level{lvl}"] = group(lvl, shape, encoder.width, parent, parent_shape, cfg.hier_hidden,
                                          cfg.hier_prior_min_log_sigma)
        super().__init__(encoder, groups)
