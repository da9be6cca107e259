"""The flow's base density (flows/tails.py, model.base_tail): a proper density that equals the normal's shape
inside |eps| <= k with a slope bounded by k beyond, exact seeded draws, and a model that scores and samples
with it."""
import math

import pytest
import torch

from flowvae.config import ConfigError, load_config
from flowvae.flows import ConditionalGlow
from flowvae.flows.tails import HuberNormal, StandardNormal, base_density
from flowvae.gaussian import normal_log_prob
from flowvae.model import FlowVAE

pytestmark = pytest.mark.usefixtures("single_thread")


def test_zero_is_the_normal_base():
    b = base_density(0.0)
    assert isinstance(b, StandardNormal)
    e = torch.randn(5, 3, 4, 4)
    assert torch.equal(b.log_prob(e), normal_log_prob(e))


@pytest.mark.parametrize("k", [0.5, 1.0, 2.0, 4.0])
def test_huber_density_integrates_to_one(k):
    e = torch.linspace(-80, 80, 400001, dtype=torch.float64)
    p = HuberNormal(k).log_prob(e[:, None]).exp()
    assert abs(torch.trapezoid(p, e).item() - 1) < 1e-6


def test_normal_shape_inside_k_and_slope_k_beyond():
    k = 2.0
    b = HuberNormal(k)
    e = torch.linspace(-10, 10, 2001, dtype=torch.float64).requires_grad_()
    lp = b.log_prob(e[:, None])
    (grad,) = torch.autograd.grad(lp.sum(), e)
    inside = e.detach().abs() <= k
    diff = (lp - normal_log_prob(e[:, None])).detach()
    assert torch.allclose(diff[inside], diff[inside][0].expand(int(inside.sum())), atol=1e-12)  # one constant
    assert torch.allclose(grad[inside], -e.detach()[inside])
    assert torch.allclose(grad[~inside], -k * e.detach()[~inside].sign())
    assert grad.abs().max() <= k + 1e-12
    far = torch.tensor([[300.0]], dtype=torch.float64)  # the normal charges 45,000 nats, the tail 596
    assert b.log_prob(far).item() > normal_log_prob(far).item() + 40000


def test_a_wide_threshold_barely_moves_the_normaliser():
    # beyond k = 4 the normal has 6e-5 of its mass: images with |eps| <= 4 everywhere score almost as before
    e = torch.randn(3, 784).clamp(-4, 4)
    assert (HuberNormal(4.0).log_prob(e) - normal_log_prob(e)).abs().max() < 784 * 1e-4


@pytest.mark.parametrize("k", [0.5, 1.5])
def test_draws_follow_the_density_and_are_seeded(k):
    b = HuberNormal(k)
    s = b.sample((200_000,), generator=torch.Generator().manual_seed(0)).double()
    n = s.numel()
    frac = (s.abs() > k).double().mean().item()
    assert abs(frac - b.p_tail) < 4 * math.sqrt(b.p_tail * (1 - b.p_tail) / n)
    # Kolmogorov-Smirnov distance to the CDF, computed by integrating the density on a grid
    grid = torch.linspace(-40, 40, 400001, dtype=torch.float64)
    cdf = torch.cumulative_trapezoid(b.log_prob(grid[:, None]).exp(), grid)
    emp = torch.searchsorted(s.sort().values, grid[1:]).double() / n
    assert (emp - cdf).abs().max().item() < 1.63 / math.sqrt(n)  # the 1% critical value
    again = b.sample((200_000,), generator=torch.Generator().manual_seed(0)).double()
    assert torch.equal(s, again)
    assert s.dtype == torch.float64 and b.sample((2, 3)).dtype == torch.float32


def test_scores_in_float32_under_half_precision():
    e = torch.randn(2, 16).to(torch.bfloat16)
    assert HuberNormal(2.0).log_prob(e).dtype == torch.float32


def test_glow_scores_eps_under_its_base():
    torch.manual_seed(0)
    normal = ConditionalGlow((1, 8, 8), 2, 2, 16)
    tailed = ConditionalGlow((1, 8, 8), 2, 2, 16, base_tail=1.0)
    tailed.load_state_dict(normal.state_dict())
    y = torch.randn(4, 1, 8, 8) * 3
    lp_n, eps = normal.log_prob(y)
    lp_t, eps_t = tailed.log_prob(y)
    assert torch.equal(eps, eps_t)  # the bijection is the same
    assert torch.allclose(lp_t - lp_n, HuberNormal(1.0).log_prob(eps) - normal_log_prob(eps), atol=1e-4)
    assert (lp_t > lp_n).all()  # |eps| > 1 somewhere in every image: the tail charges less than the square


def test_model_samples_from_its_base(monkeypatch):
    cfg = load_config(None, ["model.levels=1", "model.steps=1", "model.hidden=8", "model.z_dim=4",
                             "model.encoder_width=8", "model.image_size=8", "model.base_tail=1.5"])
    model = FlowVAE(cfg.model)
    model.initialize(torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8))
    drawn = []
    real = model.glow.base.sample

    def spy(shape, device=None, generator=None):
        out = real(shape, device, generator)
        drawn.append(out)
        return out

    monkeypatch.setattr(model.glow.base, "sample", spy)
    x = model.sample(3, temperature=0.5)
    assert x.shape == (3, 1, 8, 8) and x.dtype == torch.uint8
    assert len(drawn) == 1 and drawn[0].shape == (3, 1, 8, 8)


@pytest.mark.parametrize("bad", ["-0.5", "-1", "nan"])
def test_config_rejects_a_negative_tail(bad):
    with pytest.raises(ConfigError, match="base_tail"):
        load_config(None, [f"model.base_tail={bad}"])
