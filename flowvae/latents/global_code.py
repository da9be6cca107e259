"""The global code z: one vector per image that conditions every coupling network and prior of the Glow."""
from __future__ import annotations

from typing import Optional

from torch import Tensor, nn

from ..gaussian import normal_kl, normal_log_prob
from .base import LOG_SIGMA_RANGE, LatentGroup, Latents
from .encoder import Encoder
from .prior import build_prior


class GlobalCode(LatentGroup):
    """q(z | x) from the coarsest encoder features through a linear head; p(z) standard normal (analytic
    KL) or a learned flow (normflows RealNVP, Monte-Carlo KL)."""

    role = "vector"

    def __init__(self, feature_shape: tuple[int, int, int], z_dim: int, prior: str = "normal",
                 prior_layers: int = 2, prior_hidden: int = 256):
        super().__init__()
        c, h, w = feature_shape
        self.shape = (z_dim,)
        self.feature_height = h
        self.act = nn.SiLU()
        self.head = nn.Linear(c * h * w, 2 * z_dim)
        self.prior = build_prior(prior, z_dim, prior_layers, prior_hidden)
        self.analytic_kl = self.prior.analytic_kl

    def posterior(self, feats: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        out = self.head(self.act(feats[self.feature_height]).flatten(1)).float()
        mu, log_sigma = out.chunk(2, dim=1)
        return mu, log_sigma.clamp(*LOG_SIGMA_RANGE)

    def kl(self, mu: Tensor, log_sigma: Tensor, sample: Tensor, parent: Optional[Tensor]):
        if self.analytic_kl:
            per_dim = normal_kl(mu, log_sigma)
            return per_dim.sum(1), per_dim
        return normal_log_prob(sample, mu, log_sigma) - self.prior.log_prob(sample), None

    def log_prior(self, sample: Tensor, parent: Optional[Tensor]) -> Tensor:
        return self.prior.log_prob(sample)

    def sample(self, n: int, parent: Optional[Tensor], temperature: float, noise: Tensor) -> Tensor:
        return self.prior.sample(n, temperature, noise=noise)


def build_encoder(cfg, image_shape) -> Encoder:
    c, h, w = image_shape
    return Encoder(c, (h, w), cfg.encoder_width, cfg.encoder_blocks, levels=cfg.levels)


def global_code(cfg, encoder: Encoder) -> GlobalCode:
    h, w = encoder.coarsest
    return GlobalCode((encoder.width, h, w), cfg.z_dim, cfg.prior, cfg.prior_layers, cfg.prior_hidden)


class GlobalLatents(Latents):
    """``injection: global``: the code is z alone."""

    kind = "global"

    @staticmethod
    def condition_shapes(cfg):
        return cfg.z_dim, None

    def __init__(self, cfg, image_shape, level_shapes):
        encoder = build_encoder(cfg, image_shape)
        super().__init__(encoder, {"global": global_code(cfg, encoder)})
