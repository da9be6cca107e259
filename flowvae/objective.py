"""The bound and its bits-per-dimension accounting (README, "The model and the bound").

All quantities here are per image, in float32 or better. With
``y = (x + u) / 2^b`` and D = C*H*W:

    elbo (nats) = log p(y|z) - log q(u|x) - KL(q(z|x) || p(z)) - D*b*ln 2
    elbo_bpd    = -elbo / (D ln 2) = flow_bpd + dequant_bpd + kl_bpd

where ``flow_bpd = (-log p(y|z) + D*b*ln 2) / (D ln 2)`` (the flow's density
measured in pixel-value units), ``dequant_bpd = log q(u|x) / (D ln 2)`` and
``kl_bpd = KL / (D ln 2)``. The three names always sum to ``elbo_bpd``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

LN2 = math.log(2.0)


def gaussian_kl_per_dim(mu: Tensor, log_sigma: Tensor) -> Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)) per dimension, [N, Dz]."""
    return 0.5 * (mu.pow(2) + torch.exp(2 * log_sigma) - 1.0) - log_sigma


def gaussian_kl(mu_q: Tensor, ls_q: Tensor, mu_p: Tensor, ls_p: Tensor) -> Tensor:
    """KL(N(mu_q, e^(2 ls_q)) || N(mu_p, e^(2 ls_p))) elementwise (for top-down priors)."""
    return ls_p - ls_q + 0.5 * (torch.exp(2 * (ls_q - ls_p)) + ((mu_q - mu_p) * torch.exp(-ls_p)).pow(2) - 1.0)


def gaussian_log_prob(z: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """log N(z; mu, diag sigma^2), summed per sample."""
    return (-0.5 * ((z - mu) * torch.exp(-log_sigma)).pow(2) - log_sigma - 0.5 * math.log(2 * math.pi)).sum(1)


def bpd_terms(log_p_y: Tensor, log_q_u: Tensor, kl: Tensor, num_dims: int, n_bits: int) -> dict[str, Tensor]:
    """Per-image terms of the negative ELBO in bits/dim (see module docstring)."""
    scale = 1.0 / (num_dims * LN2)
    flow_bpd = (-log_p_y + num_dims * n_bits * LN2) * scale
    dequant_bpd = log_q_u * scale
    kl_bpd = kl * scale
    return {
        "elbo_bpd": flow_bpd + dequant_bpd + kl_bpd,
        "flow_bpd": flow_bpd,
        "dequant_bpd": dequant_bpd,
        "kl_bpd": kl_bpd,
        "kl_nats": kl,
    }


def nats_to_bpd(log_p_x: Tensor, num_dims: int) -> Tensor:
    """Bits/dim of a discrete log-likelihood (bound) in nats, per image."""
    return -log_p_x / (num_dims * LN2)


def free_bits_kl(kl_per_dim: Tensor, free_bits: float) -> Tensor:
    """Per-image KL for the training loss with free bits: each dim's batch-mean KL is clamped below at
    ``free_bits`` nats (Kingma et al. 2016); the gradient vanishes for dims under the floor."""
    if free_bits <= 0:
        return kl_per_dim.sum(1)
    batch_mean = kl_per_dim.mean(0, keepdim=True)
    floor = torch.clamp(batch_mean, min=free_bits)
    # Keep per-image values but replace dims under the floor by the (constant) floor.
    return torch.where(batch_mean < free_bits, floor.detach().expand_as(kl_per_dim), kl_per_dim).sum(1)
