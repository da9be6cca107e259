"""gaussian.py: the one diagonal-Gaussian log density and KL, against torch.distributions in float64."""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from flowvae.gaussian import normal_kl, normal_log_prob


@pytest.mark.parametrize("shape", [(5, 7), (3, 2, 4, 4)])
def test_log_prob_matches_torch_distributions(shape):
    g = torch.Generator().manual_seed(0)
    x, mu = torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64)
    ls = 0.5 * torch.randn(shape, generator=g, dtype=torch.float64)
    ref_std = Normal(0.0, 1.0).log_prob(x).flatten(1).sum(1)
    ref = Normal(mu, ls.exp()).log_prob(x).flatten(1).sum(1)
    assert torch.allclose(normal_log_prob(x), ref_std, atol=1e-10, rtol=0)
    assert torch.allclose(normal_log_prob(x, mu, ls), ref, atol=1e-10, rtol=0)
    assert normal_log_prob(x).shape == (shape[0],)


def test_log_prob_sums_in_float32_under_low_precision():
    x = torch.full((2, 300), 3.0).to(torch.bfloat16)
    got = normal_log_prob(x)
    assert got.dtype == torch.float32
    # 300 dims of -4.5 - 0.919: bf16 accumulation would be off by whole nats
    assert torch.allclose(got.double(), Normal(0.0, 1.0).log_prob(torch.full((2, 300), 3.0, dtype=torch.float64)).sum(1),
                          atol=1e-3, rtol=0)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(1)
    mu_q, mu_p = (torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    ls_q, ls_p = (0.5 * torch.randn(4, 6, generator=g, dtype=torch.float64) for _ in range(2))
    q = Normal(mu_q, ls_q.exp())
    assert torch.allclose(normal_kl(mu_q, ls_q), kl_divergence(q, Normal(0.0, 1.0)), atol=1e-12, rtol=0)
    assert torch.allclose(normal_kl(mu_q, ls_q, mu_p, ls_p), kl_divergence(q, Normal(mu_p, ls_p.exp())), atol=1e-12, rtol=0)
    assert torch.equal(normal_kl(mu_q, ls_q, mu_q, ls_q), torch.zeros_like(mu_q))
