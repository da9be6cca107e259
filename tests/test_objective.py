"""objective.py: the bound's bits/dim accounting (``Bound``), the training loss (``Objective``: KL weight,
free bits), the importance-weighted bound, and that nats become bits/dim in this one module."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
import torch
from torch.distributions import Normal

from flowvae.objective import LN2, Bound, Objective, free_bits_kl
from conftest import randomize_head

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]


def terms(log_p_y, log_q_u, kl_total, kl=None):
    return {"log_p_y": log_p_y, "log_q_u": log_q_u, "kl_total": kl_total, "kl": kl or {}}


# ------------------------------------------------------------------ bits/dim accounting
@pytest.mark.parametrize("n_bits", [8, 5])
def test_bound_reference_values(n_bits):
    d = 784
    bound = Bound(d, n_bits)
    zero = torch.zeros(3, dtype=torch.float64)
    # density 1 on the unit cube: exactly n_bits bits per dimension, nothing else
    out = bound.terms(terms(zero, zero, zero))
    assert torch.allclose(out["flow_bpd"], torch.full_like(zero, float(n_bits)), atol=1e-12, rtol=0)
    assert torch.equal(out["dequant_bpd"], zero) and torch.equal(out["kl_bpd"], zero)
    # one bit per dim of extra density, 0.25 bit/dim of dequantiser entropy term, 0.5 bit/dim KL
    log_p_y = torch.tensor([d * LN2] * 3, dtype=torch.float64)
    out = bound.terms(terms(log_p_y, -0.25 * d * LN2 + zero, 0.5 * d * LN2 + zero))
    assert torch.allclose(out["flow_bpd"], zero + n_bits - 1, atol=1e-12)
    assert torch.allclose(out["dequant_bpd"], zero - 0.25, atol=1e-12)
    assert torch.allclose(out["kl_bpd"], zero + 0.5, atol=1e-12)
    assert torch.allclose(out["kl_nats"], zero + 0.5 * d * LN2)
    assert torch.allclose(out["elbo_bpd"], zero + n_bits - 0.75, atol=1e-12)
    # the ELBO in nats (log_prob's k=1 path) is the same bound: -(n_bits - 0.75) bits per dim
    elbo = bound.elbo(terms(log_p_y, -0.25 * d * LN2 + zero, 0.5 * d * LN2 + zero))
    assert torch.allclose(elbo, zero - (n_bits - 0.75) * d * LN2, atol=1e-9)
    assert torch.allclose(bound.bpd(-elbo), out["elbo_bpd"], atol=1e-12)
    assert bound.bin_nats == pytest.approx(d * n_bits * math.log(2))
    assert bound.flow_bpd(log_p_y)[0].item() == pytest.approx(n_bits - 1)


def test_loss_terms_match_an_independent_float64_bound(make_model, images):
    model = randomize_head(make_model("model.dequantization=variational", z_path_std=0.1))
    x = images(6)
    torch.manual_seed(1)
    out = model.loss(x)
    torch.manual_seed(1)
    with torch.no_grad():
        t = model.terms(model._prepare(x))  # the same draws of (z, u)
    d, b = model.num_dims, model.n_bits
    lpy, lqu, kl = t["log_p_y"].double(), t["log_q_u"].double(), t["kl_total"].double()
    ref = (-(lpy - lqu - kl) + d * b * math.log(2)) / (d * math.log(2))
    assert torch.allclose(out["elbo_bpd"].double(), ref, atol=1e-5, rtol=0)
    assert torch.allclose(out["kl_bpd"].double(), kl / (d * math.log(2)), atol=1e-6, rtol=0)
    assert torch.allclose(out["dequant_bpd"].double(), lqu / (d * math.log(2)), atol=1e-6, rtol=0)
    assert (out["dequant_bpd"] != 0).all() and (out["kl_bpd"] > 0).all()
    assert torch.allclose(out["loss"], out["elbo_bpd"].mean(), atol=1e-6)  # kl_beta 1, no free bits
    # the same draws through log_prob(k=1): the ELBO in nats
    torch.manual_seed(1)
    assert torch.allclose(model.log_prob(x, k=1).double(), -ref * d * math.log(2), atol=1e-2, rtol=0)
    # kl_beta weighs the KL in the training loss only
    model.objective.cfg.kl_beta = 3.0
    torch.manual_seed(1)
    out3 = model.loss(x)
    assert torch.allclose(out3["elbo_bpd"], out["elbo_bpd"])
    assert torch.allclose(out3["loss"], (out["flow_bpd"] + out["dequant_bpd"] + 3 * out["kl_bpd"]).mean(), atol=1e-5)
    # and the code comes back by group: the global code is the drawn z, first in the flat layout
    assert torch.equal(out3["code"]["global"], out3["z_sample"][:, model.latent_groups()["global"]])


# ------------------------------------------------------------------ the training loss
def test_free_bits_floor_the_batch_mean_per_dimension():
    # dim 0: batch mean 0.05 < 0.1 -> floored (no gradient); dim 1: mean 2.0 kept as it is
    per_dim = torch.tensor([[0.0, 1.0], [0.1, 3.0]], requires_grad=True)
    got = free_bits_kl(per_dim, 0.1)
    assert torch.allclose(got, torch.tensor([0.1 + 1.0, 0.1 + 3.0]))
    got.sum().backward()
    assert torch.equal(per_dim.grad, torch.tensor([[0.0, 1.0], [0.0, 1.0]]))
    assert torch.equal(free_bits_kl(per_dim.detach(), 0.0), per_dim.detach().sum(1))


def test_loss_weights_the_free_bits_kl_and_reports_the_true_bound():
    from flowvae.config import LossConfig

    d, n = 4, 2
    bound = Bound(d, 8)
    obj = Objective(LossConfig(kl_beta=0.5, free_bits=0.1, level_free_bits=0.0))
    per_dim = torch.tensor([[0.0, 1.0], [0.1, 3.0]])
    kl = {"global": (per_dim.sum(1), per_dim),  # analytic: free bits per dimension
          "level0": (torch.tensor([0.3, -0.1]), None)}  # Monte-Carlo: level_free_bits 0 -> as it is
    kl_total = per_dim.sum(1) + torch.tensor([0.3, -0.1])
    t = terms(torch.full((n,), -5.0), torch.full((n,), 0.5), kl_total, kl)
    out = obj.loss(t, bound, {"global": 2, "level0": 3}, kl_weight=None)
    train_kl = torch.tensor([1.1, 3.1]) + torch.tensor([0.3, -0.1])
    nats = 5.0 + d * 8 * LN2 + 0.5 + 0.5 * train_kl  # -log p(y) + bin, + log q(u), + beta * free-bits KL
    assert torch.allclose(out["loss"], (nats / (d * LN2)).mean())
    # the reported terms are the true bound (weight 1, no free bits)
    assert torch.allclose(out["kl_bpd"], kl_total / (d * LN2))
    assert torch.allclose(out["elbo_bpd"], (5.0 + d * 8 * LN2 + 0.5 + kl_total) / (d * LN2))
    assert torch.equal(out["kl_level0_nats"], kl["level0"][0])
    # the training loop's KL weight replaces kl_beta; a Monte-Carlo KL under its floor is floored
    obj.cfg.level_free_bits = 0.2
    out = obj.loss(t, bound, {"global": 2, "level0": 3}, kl_weight=2.0)
    train_kl = torch.tensor([1.1, 3.1]) + 0.2 * 3  # batch mean 0.1 < 0.6: the floor
    assert torch.allclose(out["loss"], ((5.0 + d * 8 * LN2 + 0.5 + 2.0 * train_kl) / (d * LN2)).mean())


# ----------------------------------------------------------- importance-weighted bound
def test_iw_of_log_weights():
    bound = Bound(10, 8)
    w = torch.tensor([[-3.0, 1.0], [-1.0, 1.0], [-2.0, 1.0]])
    got = bound.iw(w)
    ref = torch.log(torch.exp(w.double()).mean(0)) - 10 * 8 * math.log(2)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), ref, atol=1e-4, rtol=0)
    # equal weights: the bound is the weight itself; unequal: above the mean (Jensen), below the max
    assert got[1].item() == pytest.approx(1.0 - bound.bin_nats, abs=1e-3)
    assert w[:, 0].mean() - bound.bin_nats < got[0] < w[:, 0].max() - bound.bin_nats
    # weights far from 0 (images have thousands of nats) are summed in float64: no overflow, no loss
    big = torch.tensor([[-4000.0], [-4001.0]])
    assert torch.isfinite(bound.iw(big)).all()
    assert bound.iw(big).item() == pytest.approx(-4000 + math.log((1 + math.exp(-1)) / 2) - bound.bin_nats, abs=1e-3)


def test_iw_bound_tightens_with_k(make_model, images):
    # E[IW_k] is non-decreasing in k (Burda et al.), and here the gaps (several nats on average over
    # 16 images) are far above the Monte-Carlo noise of these averages: over 60 seeds the smallest
    # gap was 1.3 nats. A log_prob that averaged the weights instead of logsumexp-ing them, or that
    # dropped the log-k correction, fails this.
    x = images(16)
    model = make_model("model.dequantization=variational", z_path_std=0.1)
    model.initialize(x)
    randomize_head(model)
    _, log_sigma = model.posterior(x)["global"]
    assert log_sigma.exp().mean() > 0.3
    elbo = torch.stack([model.log_prob(x, k=1) for _ in range(16)]).mean()
    iw8 = torch.stack([model.log_prob(x, k=8) for _ in range(4)]).mean()
    iw64 = model.log_prob(x, k=64).mean()
    assert elbo < iw8 < iw64, (elbo.item(), iw8.item(), iw64.item())


@pytest.mark.parametrize("chunk", [256, 7])
def test_iw_bound_is_logmeanexp_of_importance_weights(make_model, images, chunk):
    """Recompute the k-sample bound from the same draws: log w = log p(y|z) + log p(z) - log q(z|x)
    - log q(u|x), bound = logsumexp_k(log w) - log k - D*b*ln 2. log_prob draws the k copies in passes
    of chunk // N copies, each one batch [copy, image]: chunk 256 is one pass of 5, chunk 7 passes of 2, 2, 1."""
    model = randomize_head(make_model("model.dequantization=variational", z_path_std=0.1))
    x, k = images(3), 5
    torch.manual_seed(7)
    got = model.log_prob(x, k=k, chunk=chunk)
    torch.manual_seed(7)
    passes = [5] if chunk == 256 else [2, 2, 1]
    with torch.no_grad():
        mu, log_sigma = model.posterior(x)["global"]
        draws = [model.terms(model._prepare(x).repeat(m, 1, 1, 1), posterior={"global": (mu.repeat(m, 1), log_sigma.repeat(m, 1))})
                 for m in passes]
    cat = {key: torch.cat([t[key] for t in draws]) for key in ("log_p_y", "log_q_u")}
    z = torch.cat([t["code"]["global"] for t in draws]).double()
    log_q_z = Normal(mu.repeat(k, 1).double(), log_sigma.repeat(k, 1).exp().double()).log_prob(z).sum(1)
    log_p_z = Normal(0.0, 1.0).log_prob(z).sum(1)
    log_w = (cat["log_p_y"].double() + log_p_z - log_q_z - cat["log_q_u"].double()).view(k, 3)
    ref = torch.logsumexp(log_w, 0) - math.log(k) - model.num_dims * 8 * LN2
    assert torch.allclose(got.double(), ref, atol=1e-3, rtol=0)
    # and it is not the plain average of the weights (the draws differ enough for that to matter)
    assert (ref - (log_w.mean(0) - model.num_dims * 8 * LN2)).min() > 1e-2
    with pytest.raises(ValueError, match="k must be >= 1"):
        model.log_prob(x, k=0)


# ------------------------------------------------------------- one place for the bound
def test_nats_become_bits_per_dim_only_in_the_objective():
    """The bound's conversions (ln 2, D*b*ln 2) live in objective.py and the Gaussian's constant in
    gaussian.py; everything else (score, restore, analyze, TC, evaluation, training, the benchmarks)
    converts through ``Bound``. A second hand-written copy of the accounting fails this."""
    pattern = re.compile(r"\bLN2\b|math\.log\(2(\.0)?\)|log\(2 \* math\.pi\)|0\.69314|num_dims \* math|num_dims \*\s*LN2")
    allowed = {ROOT / "flowvae" / "objective.py", ROOT / "flowvae" / "gaussian.py"}
    files = sorted((ROOT / "flowvae").rglob("*.py")) + sorted((ROOT / "bench").glob("*.py"))
    offenders = [f"{p.relative_to(ROOT)}:{i}: {line.strip()}" for p in files if p not in allowed
                 for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert not offenders, "bits/dim written outside objective.py:\n" + "\n".join(offenders)


def test_coarse_first_warms_the_finest_code_up_last_and_weights_each_group():
    from flowvae.config import LossConfig

    groups = ["global", "level0", "level1"]
    obj = Objective(LossConfig(kl_beta=0.5, kl_warmup_steps=100))
    assert obj.kl_weights(9, groups) == obj.kl_scale(9) == 0.05  # together: one number for every group
    obj.cfg.kl_warmup_order = "coarse_first"
    assert [obj.warmup_steps(g, 2) for g in groups] == [100, 0, 50]
    w = obj.kl_weights(9, groups)
    assert w == {"global": 0.05, "level0": 0.5, "level1": 0.1} and obj.kl_weights(99, groups)["global"] == 0.5
    obj.cfg.kl_warmup_order = "staggered"  # the same order, the finest code warmed up too
    assert [obj.warmup_steps(g, 2) for g in groups] == [100, 33, 66]
    assert obj.kl_weights(9, groups) == {"global": 0.05, "level0": pytest.approx(0.5 * 10 / 33),
                                         "level1": pytest.approx(0.5 * 10 / 66)}
    obj.cfg.kl_warmup_order = "coarse_first"
    # each group's term carries its own weight in the loss; the reported bound does not
    d, n = 4, 2
    bound = Bound(d, 8)
    kl = {"global": (torch.tensor([1.0, 2.0]), None), "level0": (torch.tensor([3.0, 5.0]), None),
          "level1": (torch.tensor([7.0, 11.0]), None)}
    kl_total = torch.tensor([11.0, 18.0])
    t = terms(torch.full((n,), -5.0), torch.full((n,), 0.5), kl_total, kl)
    out = obj.loss(t, bound, {"global": 2, "level0": 3, "level1": 1}, kl_weight=w)
    train_kl = 0.05 * kl["global"][0] + 0.5 * kl["level0"][0] + 0.1 * kl["level1"][0]
    assert torch.allclose(out["loss"], ((5.0 + d * 8 * LN2 + 0.5 + train_kl) / (d * LN2)).mean())
    assert torch.allclose(out["elbo_bpd"], (5.0 + d * 8 * LN2 + 0.5 + kl_total) / (d * LN2))


def test_level_kl_beta_weights_each_level_code_on_its_own():
    from flowvae.config import ConfigError, LossConfig, load_config

    groups = ["global", "level0", "level1"]
    obj = Objective(LossConfig(kl_beta=0.1, level_kl_beta=[1.0, 0.3], kl_warmup_steps=100))
    assert obj.kl_weights(None, groups) == {"global": 0.1, "level0": 1.0, "level1": 0.3}
    assert obj.kl_weights(9, groups) == pytest.approx({"global": 0.01, "level0": 0.1, "level1": 0.03})  # warm-up too
    bound = Bound(4, 8)
    kl = {"global": (torch.tensor([1.0, 2.0]), None), "level0": (torch.tensor([3.0, 5.0]), None),
          "level1": (torch.tensor([7.0, 11.0]), None)}
    t = terms(torch.full((2,), -5.0), torch.full((2,), 0.5), torch.tensor([11.0, 18.0]), kl)
    out = obj.loss(t, bound, {"global": 2, "level0": 3, "level1": 1}, kl_weight=obj.kl_weights(None, groups))
    train_kl = 0.1 * kl["global"][0] + 1.0 * kl["level0"][0] + 0.3 * kl["level1"][0]
    assert torch.allclose(out["loss"], ((5.0 + 4 * 8 * LN2 + 0.5 + train_kl) / (4 * LN2)).mean())
    hier = ["model.type=hybrid", "model.injection=hierarchical", "model.levels=2"]
    assert load_config(None, hier + ["loss.level_kl_beta=[1,0.1]"]).loss.level_kl_beta == [1.0, 0.1]
    for bad in (["loss.level_kl_beta=[1]"], ["loss.level_kl_beta=[1,-0.1]"], ["loss.level_kl_beta=[1,x]"]):
        with pytest.raises(ConfigError, match="loss.level_kl_beta"):
            load_config(None, hier + bad)
    with pytest.raises(ConfigError, match="model.injection=hierarchical"):  # a global model has no level codes
        load_config(None, ["model.type=hybrid", "model.levels=2", "loss.level_kl_beta=[1,1]"])


def test_kl_warmup_order_is_checked():
    from flowvae.config import ConfigError, load_config

    from conftest import TINY

    with pytest.raises(ConfigError, match="loss.kl_warmup_order"):
        load_config(None, TINY + ["loss.kl_warmup_order=fine_first"])
