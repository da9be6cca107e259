"""The objective: the bound, its bits-per-dimension accounting, the importance-weighted bound, and the
training loss's KL schedule (beta, free bits per latent group, warm-up) under the ``loss:`` config
section (README, "The model and the bound").

This module is the one place where nats become bits/dim. It works on the model's *terms*, per image, in
nats and float32 or better (``FlowVAE.terms`` computes them for one draw of (code, u)):

    log_p_y   log p(y | code), the flow's density of the dequantised image y = (x + u) / 2^b - 1/2
    log_q_u   log q(u | x), the dequantiser's density of the noise u
    kl_total  KL(q(code | x) || p(code)), summed over the latent groups (0 for a flow-only model)

With D = C*H*W values of b bits each (``Bound(num_dims, n_bits)``):

    elbo (nats) = log_p_y - log_q_u - kl_total - D*b*ln 2
    elbo_bpd    = -elbo / (D ln 2) = flow_bpd + dequant_bpd + kl_bpd

where ``flow_bpd = (-log_p_y + D*b*ln 2) / (D ln 2)`` (the flow's density measured in pixel-value
units), ``dequant_bpd = log_q_u / (D ln 2)`` and ``kl_bpd = kl_total / (D ln 2)``. The three names
always sum to ``elbo_bpd``. Over K draws with log weights
``log w = log_p_y - log_q_u + log p(code) - log q(code | x)`` the importance-weighted bound is
``logsumexp_k log w_k - log K - D*b*ln 2`` (nats; ``iw{K}_bpd`` in bits/dim). Every reported number
is one of these bounds and is named so.

The objective never calls the model: the model hands it terms (``FlowVAE.loss`` / ``log_prob``), and
score, restore, analyze, TC, evaluation, training and bench/benchmark.py all convert through ``Bound``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

LN2 = math.log(2.0)


@dataclass(frozen=True)
class Bound:
    """The bound's accounting for images of ``num_dims`` values quantised to ``n_bits`` bits each."""

    num_dims: int
    n_bits: int

    @property
    def bin_nats(self) -> float:
        """D*b*ln 2: the log-volume of one image's quantisation bin in the flow's units (y in [-1/2, 1/2))."""
        return self.num_dims * self.n_bits * LN2

    def bpd(self, nats: Tensor) -> Tensor:
        """A cost per image in nats (a negative log-likelihood, a KL, a penalty) in bits/dim."""
        return nats / (self.num_dims * LN2)

    def flow_bpd(self, log_p_y: Tensor) -> Tensor:
        """Bits/dim of the discrete image under the flow's density of its dequantised version alone."""
        return self.bpd(self.bin_nats - log_p_y)

    def terms(self, t: dict) -> dict[str, Tensor]:
        """Per-image bits/dim of the negative ELBO from the terms ``t`` (module docstring): 'elbo_bpd',
        'flow_bpd', 'dequant_bpd', 'kl_bpd', and 'kl_nats' (the KL in nats)."""
        flow_bpd = self.flow_bpd(t["log_p_y"])
        dequant_bpd = self.bpd(t["log_q_u"])
        kl_bpd = self.bpd(t["kl_total"])
        return {"elbo_bpd": flow_bpd + dequant_bpd + kl_bpd, "flow_bpd": flow_bpd, "dequant_bpd": dequant_bpd,
                "kl_bpd": kl_bpd, "kl_nats": t["kl_total"]}

    def elbo(self, t: dict) -> Tensor:
        """The ELBO, a lower bound on log P(x), per image in nats."""
        return t["log_p_y"] - t["log_q_u"] - t["kl_total"] - self.bin_nats

    @staticmethod
    def log_weight(t: dict) -> Tensor:
        """log w = log p(y|code) - log q(u|x) + log p(code) - log q(code|x) of one draw, per image (nats);
        ``t`` holds 'log_p_code' and 'log_q_code' for a model with a code."""
        w = t["log_p_y"] - t["log_q_u"]
        if t.get("log_p_code") is not None:
            w = w + t["log_p_code"] - t["log_q_code"]
        return w

    def iw(self, log_w: Tensor) -> Tensor:
        """The importance-weighted bound on log P(x) per image (nats, float32) from the log weights
        ``log_w`` [K, N] of K draws: logsumexp_k log w_k - log K - D*b*ln 2 (the sum in float64)."""
        k = log_w.shape[0]
        return (torch.logsumexp(log_w.double(), 0) - math.log(k)).float() - self.bin_nats


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
    """The training loss of a FlowVAE, for one ``loss:`` config (``LossConfig``), from the model's terms.

    The per-image bound terms it returns are always the true bound (KL weight 1, no free bits); only
    ``loss`` (the scalar that is minimised) uses ``kl_beta``, the per-group free bits and the warm-up.
    """

    def __init__(self, cfg=None):
        from .config import LossConfig

        self.cfg = cfg if cfg is not None else LossConfig()

    def kl_scale(self, step: Optional[int] = None, warmup: Optional[int] = None, beta: Optional[float] = None) -> float:
        """The KL's weight in the training loss at optimiser step ``step`` (0-based): ``beta`` (default kl_beta)
        times the linear warm-up over ``warmup`` steps (default kl_warmup_steps; None step: after warm-up)."""
        warm = self.cfg.kl_warmup_steps if warmup is None else warmup
        ramp = 1.0 if step is None or not warm else min(1.0, (step + 1) / warm)
        return (self.cfg.kl_beta if beta is None else beta) * ramp

    def beta(self, group: str) -> float:
        """The KL weight of one latent group after warm-up: level_kl_beta[l] for level code l where it is set,
        else kl_beta."""
        if self.cfg.level_kl_beta and group.startswith("level"):
            return float(self.cfg.level_kl_beta[int(group[len("level"):])])
        return self.cfg.kl_beta

    def warmup_steps(self, group: str, levels: int) -> int:
        """The KL warm-up of one latent group of a model with ``levels`` level codes. ``together``: every group
        over kl_warmup_steps. ``coarse_first``: the global code over kl_warmup_steps and level code l over
        kl_warmup_steps * l / levels, so the finest (level0) pays its full KL from the first step while the
        coarser codes are still cheap: a KL form of growing the codes from the most abstract one down (Li et
        al., "Progressive Learning and Disentanglement of Hierarchical Representations"). ``staggered``: the
        same order, level code l over kl_warmup_steps * (l + 1) / (levels + 1), so the finest code also gets a
        (shorter) warm-up."""
        if self.cfg.kl_warmup_order == "together" or group == "global" or not group.startswith("level"):
            return self.cfg.kl_warmup_steps
        level = int(group[len("level"):])
        if self.cfg.kl_warmup_order == "staggered":
            return self.cfg.kl_warmup_steps * (level + 1) // (levels + 1)
        return self.cfg.kl_warmup_steps * level // levels

    def kl_weights(self, step: Optional[int], groups) -> Union[float, dict[str, float]]:
        """The KL weight the training loop passes to ``loss`` at ``step``: one number when every group warms
        up together with one weight, else a number per group of ``groups`` (names)."""
        if self.cfg.kl_warmup_order == "together" and not self.cfg.level_kl_beta:
            return self.kl_scale(step)
        levels = sum(g.startswith("level") for g in groups)
        return {g: self.kl_scale(step, self.warmup_steps(g, levels), self.beta(g)) for g in groups}

    def free_bits(self, group: str) -> float:
        """Free nats per dimension of a latent group in the training loss."""
        return self.cfg.free_bits if group == "global" else self.cfg.level_free_bits

    def train_kl(self, kl: dict, sizes: dict, weight: Union[float, dict[str, float]] = 1.0) -> Tensor:
        """The KL in the training loss [N], from the per-group KL of ``Latents.kl``: free bits per dimension
        where the KL is analytic; a floor on the batch mean where it is a Monte-Carlo estimate (per-image
        estimates are noisy, even negative); each group's term times ``weight`` (one number or one per group).
        ``sizes``: dims per group."""
        total = 0.0
        for name, (per_image, per_dim) in kl.items():
            fb = self.free_bits(name)
            if fb <= 0:
                term = per_image
            elif per_dim is not None:
                term = free_bits_kl(per_dim, fb)
            else:
                floor = fb * sizes[name]
                term = torch.full_like(per_image, floor) if per_image.mean() < floor else per_image
            total = total + term * (weight[name] if isinstance(weight, dict) else weight)
        return total

    def loss(self, t: dict, bound: Bound, sizes: dict,
             kl_weight: Union[None, float, dict[str, float]] = None) -> dict[str, Tensor]:
        """The training objective from the terms ``t`` of one draw (``FlowVAE.terms``): 'loss' (scalar:
        mean of flow + dequantisation bits/dim plus ``kl_weight`` (default ``kl_scale()``: kl_beta; the
        training loop passes ``kl_weights(step, groups)``, a number per group under a staged order) times the
        free-bits KL), the per-image bound terms of ``Bound.terms`` and, per latent group, 'kl_{group}_nats'.
        ``sizes``: dims per latent group."""
        out = bound.terms(t)
        if not t["kl"]:
            out["loss"] = out["elbo_bpd"].mean()
            return out
        weight = self.kl_scale() if kl_weight is None else kl_weight
        train_kl = self.train_kl(t["kl"], sizes, weight)
        out["loss"] = (out["flow_bpd"] + out["dequant_bpd"] + bound.bpd(train_kl)).mean()
        for name, (per_image, _) in t["kl"].items():
            out[f"kl_{name}_nats"] = per_image
        return out
