"""The hierarchical variant (model.injection=hierarchical): per-level latents z_l condition the Glow.

The same promises as the global model (bijection, log-det, exact codes), a KL that is non-negative per
level and sums into the loss, a consistent importance-weighted bound, and resample-level changing only
the group it re-draws.
"""
from __future__ import annotations

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from flowvae import ConfigError, load_config
from flowvae.objective import LN2

from conftest import randomize_

pytestmark = pytest.mark.usefixtures("single_thread")

HIER = ["model.injection=hierarchical", "model.hier_channels=2", "model.hier_hidden=8"]
PRIORS = ["normal", "topdown", "ladder"]  # ladder: the top-down prior, and q(z_l | x, z_{l+1}) merged with it


def make_hier(make_model, prior: str, *extra: str, seed: int = 0):
    """A tiny hierarchical model whose every latent path is live: the glow's zero-initialised parts,
    the posterior heads and the top-down prior are randomised (fresh they are the identity / N(0, I))."""
    keys = ["model.hier_prior=topdown", "model.hier_posterior=ladder"] if prior == "ladder" else [f"model.hier_prior={prior}"]
    model = make_model(*HIER, *keys, *extra, seed=seed, z_path_std=0.1)
    randomize_(model.latents, 0.2, seed=seed + 1, only=lambda n: n.startswith("groups."))
    return model


def level_prior(model, lvl: int, code: dict):
    """(mu, log_sigma) of p(z_lvl | its parent) for a named code."""
    g = model.latents.groups[f"level{lvl}"]
    parent = code[g.parent] if g.parent else None
    n = next(iter(code.values())).shape[0]
    return g.prior_params(parent, n, torch.device("cpu"))


@pytest.mark.parametrize("prior", PRIORS)
def test_code_layout(make_model, prior):
    model = make_hier(make_model, prior)
    # TINY: 8x8 images, 2 levels -> z_0 [2, 4, 4], z_1 [2, 2, 2]; global z 4
    assert model.latents.shapes() == {"global": (4,), "level0": (2, 4, 4), "level1": (2, 2, 2)}
    assert model.code_dim == 4 + 32 + 8
    groups = model.latent_groups()
    assert list(groups) == ["global", "level0", "level1"]
    assert [(s.start, s.stop) for s in groups.values()] == [(0, 4), (4, 36), (36, 44)]
    code = torch.arange(2 * model.code_dim, dtype=torch.float32).view(2, -1)
    z, levels = model.split_code(code)
    assert torch.equal(z, code[:, :4])
    assert torch.equal(levels[1].flatten(1), code[:, 36:])
    named = model.latents.unflatten(code)
    assert torch.equal(named["level0"], levels[0]) and torch.equal(model.latents.flatten(named), code)


@pytest.mark.parametrize("split", ["kept", "code"])
@pytest.mark.parametrize("prior", PRIORS)
def test_glow_logdet_matches_brute_force_jacobian_with_level_codes(make_model, images, prior, split):
    """The decoder of the hierarchical model is a bijection in y for each (z, z_l): round trip and
    log-det against the float64 Jacobian, with the model's own code as condition; also with the split
    priors reading the codes alone (model.split_prior=code)."""
    model = make_hier(make_model, prior, f"model.split_prior={split}")
    assert model.glow.priors[0].read_kept == (split == "kept")
    x = images(2)
    with torch.no_grad():
        code = model._posterior(model._prepare(x))[0].double()
        code = code + 0.5 * torch.randn_like(code)
    model.double()
    z, levels = model.split_code(code)
    y = torch.rand(2, *model.image_shape, dtype=torch.float64) - 0.5
    eps, ld = model.glow(y, z, levels)
    y_back, ld_inv = model.glow.inverse(eps, z, levels)
    assert torch.allclose(y_back, y, atol=1e-10, rtol=0)
    assert torch.allclose(ld + ld_inv, torch.zeros_like(ld), atol=1e-10)
    for i in range(2):
        zi, li = z[i:i + 1], [t[i:i + 1] for t in levels]
        jac = torch.autograd.functional.jacobian(lambda v: model.glow(v.view(1, *model.image_shape), zi, li)[0].reshape(-1),
                                                 y[i].reshape(-1))
        assert torch.allclose(torch.linalg.slogdet(jac)[1], ld[i], atol=1e-8, rtol=0)
    # every level latent really conditions the flow
    for lvl in range(2):
        moved = [t + (1.0 if j == lvl else 0.0) for j, t in enumerate(levels)]
        assert (model.glow(y, z, moved)[0] - eps).abs().max() > 1e-3


@pytest.mark.parametrize("split", ["kept", "code"])
@pytest.mark.parametrize("prior", PRIORS)
def test_decode_encode_and_swap_exact(make_model, images, prior, split):
    model = make_hier(make_model, prior, f"model.split_prior={split}")
    x, x2 = images(8, seed=1), images(8, seed=2)
    model.initialize(x)
    code, eps = model.encode(x)
    assert code.shape == (8, model.code_dim)
    assert torch.equal(model.decode(code, eps), x)
    assert torch.equal(model.swap(x, x), x)
    assert (model.swap(x, x2) != x).float().mean() > 0.05
    # only the level codes differ: still a different image
    code2, _ = model.encode(x2)
    mixed = torch.cat([code[:, :4], code2[:, 4:]], 1)
    assert not torch.equal(model.decode(mixed, eps), x)
    with pytest.raises(ValueError, match=f"z must have shape \\[N, {model.code_dim}\\]"):
        model.decode(code[:, :4], eps)


@pytest.mark.parametrize("prior", PRIORS)
def test_kl_per_level_non_negative_and_sums_into_the_loss(make_model, images, prior):
    model = make_hier(make_model, prior)
    half_kl = make_hier(make_model, prior, "loss.kl_beta=0.5")
    x = images(6)
    torch.manual_seed(3)
    out = model.loss(x)
    per_level = torch.stack([out["kl_level0_nats"], out["kl_level1_nats"]], 1)
    assert (per_level > 0).all() and (out["kl_global_nats"] > 0).all()
    assert torch.allclose(out["kl_nats"], out["kl_global_nats"] + per_level.sum(1), atol=1e-4)
    assert torch.allclose(out["kl_bpd"], out["kl_nats"] / (model.num_dims * LN2), atol=1e-6)
    assert torch.allclose(out["loss"], out["elbo_bpd"].mean(), atol=1e-6)
    # the loss reacts to the level KL: beta scales all of it
    torch.manual_seed(3)
    half = half_kl.loss(x)
    assert torch.allclose(out["loss"] - half["loss"], 0.5 * out["kl_bpd"].mean(), atol=1e-5)


def test_topdown_kl_matches_torch_distributions(make_model, images):
    model = make_hier(make_model, "topdown")
    x = images(4)
    with torch.no_grad():
        mu, ls = model._posterior(model._prepare(x))
        code = mu + ls.exp() * torch.randn_like(mu)
        z, levels = model.split_code(code)
        named, mq, lq = model.latents.unflatten(code), model.latents.unflatten(mu), model.latents.unflatten(ls)
        kl = model.latents.kl({n: (mq[n], lq[n]) for n in named}, named)
        kl_levels = torch.stack([kl["level0"][0], kl["level1"][0]], 1)
        log_p = model.latents.log_p(named) - model.latents.groups["global"].log_prior(z, None)
        mq, lq = [mq["level0"], mq["level1"]], [lq["level0"], lq["level1"]]
        ref_kl, ref_lp = [], 0
        for lvl in range(2):
            mp, lp = level_prior(model, lvl, named)
            assert lp.abs().max() > 1e-3 and mp.abs().max() > 1e-3  # the top-down prior is not N(0, I)
            p = Normal(mp.double(), lp.double().exp())
            ref_kl.append(kl_divergence(Normal(mq[lvl].double(), lq[lvl].double().exp()), p).flatten(1).sum(1))
            ref_lp = ref_lp + p.log_prob(levels[lvl].double()).flatten(1).sum(1)
    assert torch.allclose(kl_levels.double(), torch.stack(ref_kl, 1), rtol=1e-4, atol=1e-4)
    assert torch.allclose(log_p.double(), ref_lp, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("prior", PRIORS)
def test_monte_carlo_kl_matches_analytic_and_iw_bound_tightens(make_model, images, prior):
    """E_q[log q(code|x) - log p(code)] equals the analytic KL the loss uses (so the IW bound and the
    ELBO score the same latents), and the importance-weighted bound tightens with k."""
    model = make_hier(make_model, prior)
    x = images(1).repeat(4000, 1, 1, 1)
    with torch.no_grad():
        t = model.terms(model._prepare(x))
    mc = (model.latents.log_q(t["posterior"], t["code"]) - model.latents.log_p(t["code"])).double()
    assert abs(mc.mean() - t["kl_total"].double().mean()) < 4 * mc.std() / 4000 ** 0.5 + 1e-3
    xs = images(8, seed=5)
    elbo = torch.stack([model.log_prob(xs, k=1) for _ in range(8)]).mean()
    iw = model.log_prob(xs, k=32).mean()
    assert iw > elbo


def test_ladder_posterior_is_the_product_of_the_bottom_up_gaussian_and_the_prior(make_model, images):
    """q(z_l | x, z_{l+1}) of a ladder level is N(mu_x, s_x) * p(z_l | z_{l+1}), normalised: its log density
    minus the two factors' is one constant per dimension, and it follows the drawn parent."""
    model = make_hier(make_model, "ladder")
    lat = model.latents
    with torch.no_grad():
        post = lat.posterior(model._centered(model._prepare(images(3))))
        given, code = lat.draw(post)
        assert torch.equal(given["global"][0], post["global"][0])  # the global code has no parent
        for lvl in range(2):
            (mx, lx), (mq, lq) = post[f"level{lvl}"], given[f"level{lvl}"]
            mp, lp = level_prior(model, lvl, code)
            assert lp.abs().max() > 1e-3 and (mx - mp).abs().max() > 1e-3  # two different factors
            factors = [Normal(m.double(), s.double().exp()) for m, s in ((mx, lx), (mp, lp), (mq, lq))]
            v = torch.randn(5, *mq.shape, dtype=torch.float64) * 2 + mq.double()  # five points per dimension
            gap = factors[2].log_prob(v) - factors[0].log_prob(v) - factors[1].log_prob(v)
            assert (gap - gap[:1]).abs().max() < 1e-4
            assert (lq < torch.minimum(lx, lp) + 1e-6).all()  # the merge is sharper than either factor
        # another draw of the parent moves the child's posterior with it
        again, code2 = lat.draw(post)
        assert not torch.allclose(again["level0"][0], given["level0"][0])
        # the deterministic draw: every group at its mean given its parents' means
        means, mcode = lat.draw(post, deterministic=True)
        assert all(torch.equal(mcode[n], means[n][0]) for n in mcode)


def test_prior_floor_bounds_the_top_down_scale(make_model, images):
    """model.hier_prior_min_log_sigma floors log sigma of every top-down prior and changes nothing else,
    and the loss's KL is taken against the floored prior."""
    floor = -0.2
    free, floored = make_hier(make_model, "ladder"), make_hier(make_model, "ladder", f"model.hier_prior_min_log_sigma={floor}")
    with torch.no_grad():
        post = floored.latents.posterior(floored._centered(floored._prepare(images(3))))
        _, code = floored.latents.draw(post)
        for lvl in range(2):
            (m0, l0), (m1, l1) = level_prior(free, lvl, code), level_prior(floored, lvl, code)
            assert (l0 < floor).any() and (l0 > floor).any()  # the floor binds somewhere, not everywhere
            assert torch.equal(m0, m1) and torch.equal(l1, l0.clamp(min=floor))
        torch.manual_seed(0)
        t = floored.terms(floored._prepare(images(3)))
        for lvl in range(2):
            mp, lp = level_prior(floored, lvl, t["code"])
            mq, lq = t["posterior"][f"level{lvl}"]
            ref = kl_divergence(Normal(mq.double(), lq.double().exp()), Normal(mp.double(), lp.double().exp()))
            assert torch.allclose(t["kl"][f"level{lvl}"][0].double(), ref.flatten(1).sum(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prior", PRIORS)
def test_resample_level_changes_only_its_group(make_model, images, prior):
    model = make_hier(make_model, prior)
    x = images(4)
    model.initialize(x)
    code, eps = model.encode(x)
    z, levels = model.split_code(code)
    for level in ["global", 0, 1]:
        gen = lambda: torch.Generator().manual_seed(11)  # noqa: E731
        a = model.resample_level(x, level, generator=gen())
        assert torch.equal(a, model.resample_level(x, level, generator=gen()))  # same draw, same image
        assert not torch.equal(a, x)
        assert not torch.equal(a, model.resample_level(x, level, generator=torch.Generator().manual_seed(12)))
        # the expected code: this group from its prior (given the held parents), the rest held
        noise = torch.randn(model.group_shape(level, 4), generator=gen())
        if level == "global":
            expect = torch.cat([noise, code[:, 4:]], 1)
        else:
            mp, lp = level_prior(model, level, model.latents.unflatten(code))
            new = mp + lp.exp() * noise
            expect = torch.cat([z] + [new.flatten(1) if j == level else t.flatten(1) for j, t in enumerate(levels)], 1)
        assert torch.equal(a, model.decode(expect, eps))
        # re-drawing with the noise that gives back the original code reproduces the image exactly
        if level == "global":
            back = z
        else:
            mp, lp = level_prior(model, level, model.latents.unflatten(code))
            back = (levels[level] - mp) / lp.exp()
        assert torch.equal(model.resample_level(x, level, noise=back), x)
    with pytest.raises(ValueError, match="level must be 'global' or a level 0..1"):
        model.resample_level(x, 2)
    with pytest.raises(ValueError, match="noise must have shape"):
        model.resample_level(x, 0, noise=torch.zeros(4, 3))


def test_resample_level_on_other_models(make_model, images):
    x = images(2)
    glob = make_model(z_path_std=0.1)
    assert not torch.equal(glob.resample_level(x, "global"), x)
    with pytest.raises(ValueError, match="level must be 'global' for this model"):
        glob.resample_level(x, 0)
    with pytest.raises(ValueError, match="flow-only"):
        make_model("model.type=glow").resample_level(x, "global")


def test_sample_draws_every_level(make_model):
    model = make_hier(make_model, "topdown")
    torch.manual_seed(0)
    code = model.sample_code(5)
    assert code.shape == (5, model.code_dim) and code[:, 4:].std() > 0.1
    assert model.sample(5).shape == (5, *model.image_shape)


@pytest.mark.parametrize("overrides, match", [
    (["model.injection=hierarchical", "model.type=glow"], "needs model.type=hybrid"),
    (["model.injection=ladder"], "model.injection must be one of"),
    (["model.injection=hierarchical", "model.hier_channels=0"], "hier_channels"),
    (["model.hier_prior=flow"], "model.hier_prior must be one of"),
    (["model.injection=hierarchical", "model.hier_prior=normal", "model.hier_posterior=ladder"], "needs model.injection=hierarchical and model.hier_prior=topdown"),
    (["model.hier_posterior=topdown"], "model.hier_posterior must be one of"),
    (["model.injection=hierarchical", "model.hier_prior_min_log_sigma=-2"], "floors the top-down prior"),
    (["model.injection=hierarchical", "model.hier_prior=topdown", "model.hier_prior_min_log_sigma=1"], "must be in"),
])
def test_bad_hierarchical_config(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_evaluate_reports_each_latent_group(make_model, images):
    from flowvae.data.datasets import TensorImages
    from flowvae.engine.evaluate import evaluate

    model = make_hier(make_model, "topdown")
    ds = TensorImages(images(40), torch.zeros(40, dtype=torch.long), "random")
    res = evaluate(model, ds, k=2, batch_size=16, progress=False)
    assert res["z_dim"] == 4 and 0 <= res["active_units"] <= 4
    assert (res["dims_level0"], res["dims_level1"]) == (32, 8)
    assert 0 <= res["active_units_level0"] <= 32 and res["active_units_level1"] <= 8
    parts = res["kl_global_nats"] + res["kl_level0_nats"] + res["kl_level1_nats"]
    assert parts > 0 and abs(parts - res["kl_nats"]) < 1e-3 * res["kl_nats"]
    assert res["iw2_bpd"] < res["elbo_bpd"] + 0.05
