"""Factor-VAE total-correlation penalty (Kim & Mnih 2018) on the global code z.

    flowvae train --config configs/quickstart.yaml --out runs/tc loss.tc_weight=10

TC(z) = KL(q(z) || prod_j q(z_j)), with q(z) the aggregate posterior. A discriminator D tells
samples of q(z) (codes z ~ q(z|x) of a batch) from samples of prod_j q(z_j) (the same batch with
every dimension permuted independently across the batch: the permute-dims trick). With logits
(l_joint, l_perm), the density-ratio trick gives

    TC ~= E_q(z) [ l_joint(z) - l_perm(z) ].

Training adds ``tc_weight * TC / (D ln 2)`` to the loss (``TCPenalty.loss_bpd``: bits/dim through
``Bound.bpd``, like the KL; so gamma is in the same units as in the paper, relative to a KL of weight 1). The discriminator's parameters get no
gradient from that term; it is updated by its own optimiser after each model step on the detached
codes. None of this touches the reported bound: ``elbo_bpd`` and its terms stay the true ELBO.

``estimate_tc`` measures TC after training with a *fresh* discriminator (same for every model, so
runs with different gamma are compared by the same estimator) and with the Gaussian approximation
0.5 (sum_j log Var z_j - log det Cov z), which needs no training.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

HIDDEN, LAYERS, LR, BETAS = 256, 3, 1e-4, (0.5, 0.9)


def permute_dims(z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
    """Each column of z [B, D] permuted independently across the batch: a sample of prod_j q(z_j)."""
    b, d = z.shape
    idx = torch.argsort(torch.rand(b, d, generator=generator, device=z.device if generator is None else generator.device), 0)
    return torch.gather(z, 0, idx.to(z.device))


class TCDiscriminator(nn.Module):
    """MLP z -> 2 logits (0: joint q(z), 1: permuted)."""

    def __init__(self, z_dim: int, hidden: int = HIDDEN, layers: int = LAYERS):
        super().__init__()
        mods, d = [], z_dim
        for _ in range(layers):
            mods += [nn.Linear(d, hidden), nn.LeakyReLU(0.2)]
            d = hidden
        mods.append(nn.Linear(d, 2))
        self.net = nn.Sequential(*mods)

    def forward(self, z: Tensor) -> Tensor:
        return self.net(z.float())

    def tc(self, z: Tensor) -> Tensor:
        """Per-sample density-ratio estimate log q(z) / prod q(z_j), nats."""
        logits = self(z)
        return logits[:, 0] - logits[:, 1]

    def loss(self, z: Tensor, generator: Optional[torch.Generator] = None) -> Tensor:
        """Cross-entropy of telling z (label 0) from its permutation (label 1)."""
        z = z.detach()
        zp = permute_dims(z, generator)
        zero = torch.zeros(z.shape[0], dtype=torch.long, device=z.device)
        return 0.5 * (F.cross_entropy(self(z), zero) + F.cross_entropy(self(zp), zero + 1))


class TCPenalty:
    """The training-time pair (discriminator, its optimiser) for ``loss.tc_weight`` > 0."""

    def __init__(self, z_dim: int, weight: float, device: torch.device):
        self.weight = weight
        self.disc = TCDiscriminator(z_dim).to(device)
        self.opt = torch.optim.Adam(self.disc.parameters(), lr=LR, betas=BETAS)
        self.last = {"tc_nats": float("nan"), "tc_disc_loss": float("nan")}

    def loss_bpd(self, z: Tensor, bound) -> Tensor:
        """The term the training loss adds: ``weight`` times the batch-mean TC of the global codes ``z``
        (``out['code']['global']`` of ``FlowVAE.loss``) in bits/dim (``bound``: the model's ``Bound``)."""
        return self.weight * bound.bpd(self.penalty(z).mean())

    def penalty(self, z: Tensor) -> Tensor:
        """Per-image TC estimate (nats) with gradients to z only (the discriminator is held fixed)."""
        for p in self.disc.parameters():
            p.requires_grad_(False)
        try:
            with torch.autocast(z.device.type, enabled=False):
                return self.disc.tc(z.float())
        finally:
            for p in self.disc.parameters():
                p.requires_grad_(True)

    def update(self, z: Tensor, info=None) -> None:
        """One discriminator step on detached codes; under DDP (``info.enabled``: the training loop's
        ``DistInfo``) its gradients are averaged over ranks so every rank keeps the same discriminator."""
        with torch.enable_grad(), torch.autocast(z.device.type, enabled=False):
            loss = self.disc.loss(z.float())
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        if info is not None and info.enabled:
            for p in self.disc.parameters():
                dist.all_reduce(p.grad)
                p.grad /= info.world_size
        self.opt.step()
        with torch.no_grad():
            self.last = {"tc_nats": float(self.disc.tc(z.float()).mean()), "tc_disc_loss": float(loss)}

    def state_dict(self) -> dict:
        return {"disc": self.disc.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.disc.load_state_dict(state["disc"])
        self.opt.load_state_dict(state["opt"])


@torch.no_grad()
def posterior_samples(model, x: Tensor, batch: int = 256, generator: Optional[torch.Generator] = None) -> Tensor:
    """Global codes z ~ q(z|x) [N, z_dim] (float32, CPU)."""
    if not model.hybrid:
        raise ValueError("TC needs a code z: this is a flow-only (model.type=glow) model")
    out = []
    for i in range(0, x.shape[0], batch):
        mu, log_sigma = model.posterior(x[i : i + batch])["global"]
        eps = torch.randn(mu.shape, generator=generator, device=generator.device if generator else mu.device)
        out.append((mu + log_sigma.exp() * eps.to(mu.device)).float().cpu())
    return torch.cat(out)


def gaussian_tc(z: Tensor) -> float:
    """TC of a Gaussian with z's covariance: 0.5 (sum_j log Var_j - log det Cov), nats (>= 0)."""
    zc = z.double() - z.double().mean(0)
    cov = zc.T @ zc / (z.shape[0] - 1)
    return float(0.5 * (torch.log(torch.diagonal(cov)).sum() - torch.linalg.slogdet(cov)[1]))


def estimate_tc(model, x_train: Tensor, x_test: Tensor, steps: int = 2000, batch: int = 256, seed: int = 0) -> dict:
    """TC of q(z) measured after training: a fresh discriminator fitted on codes of ``x_train`` images
    (``steps`` Adam steps, lr 1e-3), its mean density ratio on codes of ``x_test``; and gaussian_tc on
    the test codes. Both in nats."""
    g = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        z_tr = posterior_samples(model, x_train, generator=g)
        z_te = posterior_samples(model, x_test, generator=g)
        disc = TCDiscriminator(z_tr.shape[1])
        opt = torch.optim.Adam(disc.parameters(), lr=1e-3)
        with torch.enable_grad():
            for _ in range(steps):
                idx = torch.randint(0, z_tr.shape[0], (batch,), generator=g)
                loss = disc.loss(z_tr[idx], g)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        with torch.no_grad():
            tc = float(disc.tc(z_te).mean())
    return {"tc_disc_nats": tc, "tc_gauss_nats": gaussian_tc(z_te)}
