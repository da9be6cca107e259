"""Prior p(z) over the global code: standard normal, or a learned flow built from normflows.

normflows' vector flows (RealNVP coupling blocks with MLPs) are exactly what a
64-d prior needs, so they are used as they are; its convention is the reverse
of ours (its ``forward`` samples), which this wrapper hides.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..gaussian import normal_log_prob


class StandardNormalPrior(nn.Module):
    analytic_kl = True

    def __init__(self, z_dim: int):
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("_device_anchor", torch.zeros(()), persistent=False)

    def log_prob(self, z: Tensor) -> Tensor:
        return normal_log_prob(z.float())

    def sample(self, n: int, temperature: float = 1.0, noise: Optional[Tensor] = None) -> Tensor:
        """n draws at ``temperature``; ``noise`` [n, z_dim] replaces the standard-normal draw."""
        if noise is None:
            noise = torch.randn(n, self.z_dim, device=self._device_anchor.device)
        return temperature * noise


class FlowPrior(nn.Module):
    """p(z) = RealNVP flow (normflows) over a standard normal base."""

    analytic_kl = False

    def __init__(self, z_dim: int, layers: int = 2, hidden: int = 256):
        super().__init__()
        if z_dim % 2:
            raise ValueError(f"a flow prior needs an even z_dim, got {z_dim}")
        try:  # imported here: only this prior needs normflows (a GPU image may lack it; model.prior=normal works)
            import normflows as nf
        except ImportError as e:
            raise ImportError(f"model.prior=flow needs the normflows package ({e}); pip install normflows, "
                              f"or set model.prior=normal") from None
        flows = []
        for _ in range(layers):
            net = nf.nets.MLP([z_dim // 2, hidden, hidden, z_dim], init_zeros=True)
            flows += [nf.flows.AffineCouplingBlock(net), nf.flows.Permute(z_dim, mode="swap")]
        self.flow = nf.NormalizingFlow(nf.distributions.DiagGaussian(z_dim, trainable=False), flows)
        self.z_dim = z_dim

    def log_prob(self, z: Tensor) -> Tensor:
        with torch.autocast(z.device.type, enabled=False):  # priors stay float32 under autocast
            return self.flow.log_prob(z.float())

    def sample(self, n: int, temperature: float = 1.0, noise: Optional[Tensor] = None) -> Tensor:
        base = self.flow.q0.loc  # fixed N(0, I) base; scaling its noise is the usual flow temperature
        if noise is None:
            noise = torch.randn(n, self.z_dim, device=base.device, dtype=base.dtype)
        return self.flow.forward(temperature * noise)


def build_prior(kind: str, z_dim: int, layers: int, hidden: int) -> nn.Module:
    if kind == "normal":
        return StandardNormalPrior(z_dim)
    if kind == "flow":
        return FlowPrior(z_dim, layers, hidden)
    raise ValueError(f"unknown prior {kind!r}: use 'normal' or 'flow'")
