"""The objective: the bound, its bits-per-dimension accounting, the importance-weighted bound, and the
training loss's KL schedule (beta, free bits per latent group, warm-up) under the ``loss:`` config
section (README, "The model and the bound").

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
from typing import Optional

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


class Objective:
    """ELBO, IW bound and training loss of a FlowVAE, for one ``loss:`` config (``LossConfig``).

    The per-image bound terms it returns are always the true bound (KL weight 1, no free bits); only
    ``loss`` (the scalar that is minimised) uses ``kl_beta``, the per-group free bits and the warm-up.
    """

    def __init__(self, cfg=None):
        from .config import LossConfig

        self.cfg = cfg if cfg is not None else LossConfig()

    def kl_scale(self, step: Optional[int] = None) -> float:
        """The KL's weight in the training loss at optimiser step ``step`` (0-based): kl_beta times the
        linear warm-up over kl_warmup_steps (None: after warm-up)."""
        warm = self.cfg.kl_warmup_steps
        ramp = 1.0 if step is None or not warm else min(1.0, (step + 1) / warm)
        return self.cfg.kl_beta * ramp

    def free_bits(self, group: str) -> float:
        """Free nats per dimension of a latent group in the training loss."""
        return self.cfg.free_bits if group == "global" else self.cfg.level_free_bits

    def train_kl(self, kl: dict, sizes: dict) -> Tensor:
        """The KL in the training loss [N] (before the weight), from the per-group KL of ``Latents.kl``:
        free bits per dimension where the KL is analytic; a floor on the batch mean where it is a
        Monte-Carlo estimate (per-image estimates are noisy, even negative). ``sizes``: dims per group."""
        total = 0.0
        for name, (per_image, per_dim) in kl.items():
            fb = self.free_bits(name)
            if fb <= 0:
                total = total + per_image
            elif per_dim is not None:
                total = total + free_bits_kl(per_dim, fb)
            else:
                floor = fb * sizes[name]
                total = total + (torch.full_like(per_image, floor) if per_image.mean() < floor else per_image)
        return total

    def loss(self, model, x: Tensor, kl_weight: Optional[float] = None) -> dict:
        """The training objective of ``model`` on uint8 images ``x``. Returns 'loss' (scalar: mean of
        flow + dequantisation bits/dim plus ``kl_weight`` (default ``kl_scale()``: kl_beta; the training
        loop passes ``kl_scale(step)``) times the free-bits KL) and
        per-image 'elbo_bpd', 'flow_bpd', 'kl_bpd', 'dequant_bpd', 'kl_nats', 'kl_{group}_nats' (and, for
        a model with a code, 'z_mean' (posterior mean) and 'z_sample' (the drawn code), flat)."""
        model._require_initialized("loss")
        if kl_weight is None:
            kl_weight = self.kl_scale()
        t = model.terms(model._prepare(x))
        out = bpd_terms(t["log_p_y"], t["log_q_u"], t["kl_total"], model.num_dims, model.n_bits)
        if t["kl"]:
            sizes = {name: model.latents.groups[name].size for name in t["kl"]}
            train_kl = self.train_kl(t["kl"], sizes) * kl_weight
            out["loss"] = (out["flow_bpd"] + out["dequant_bpd"] + train_kl / (model.num_dims * LN2)).mean()
            out["z_mean"] = model.latents.flatten({n: mu for n, (mu, _) in t["posterior"].items()})
            out["z_sample"] = model.latents.flatten(t["code"])
            for name, (per_image, _) in t["kl"].items():
                out[f"kl_{name}_nats"] = per_image
        else:
            out["loss"] = out["elbo_bpd"].mean()
        return out

    @staticmethod
    @torch.no_grad()
    def log_prob(model, x: Tensor, k: int = 1, chunk: int = 256) -> Tensor:
        """Per-image lower bound on log P(x) in nats: k=1 the ELBO, k>1 the importance-weighted bound
        logsumexp_k(log w_k) - log k over k draws of (code, u), with
        log w = log p(y|z) - log q(u|x) + log p(code) - log q(code|x)."""
        x_int = model._prepare(x)
        n = x_int.shape[0]
        const = model.num_dims * model.n_bits * LN2
        if k == 1:
            t = model.terms(x_int)
            return t["log_p_y"] - t["log_q_u"] - t["kl_total"] - const
        posterior = model.latents.posterior(model._centered(x_int)) if model.latents else {}
        per_pass = max(1, min(k, chunk // n))
        log_w, done = [], 0
        while done < k:
            m = min(per_pass, k - done)
            post = {name: tuple(p.repeat(m, *([1] * (p.dim() - 1))) for p in mu_ls) for name, mu_ls in posterior.items()}
            t = model.terms(x_int.repeat(m, 1, 1, 1), posterior=post)
            w = t["log_p_y"] - t["log_q_u"]
            if t["kl"]:
                w = w + model.latents.log_p(t["code"]) - model.latents.log_q(t["posterior"], t["code"])
            log_w.append(w.view(m, n))
            done += m
        log_w = torch.cat(log_w, 0).double()
        return (torch.logsumexp(log_w, 0) - math.log(k)).float() - const
