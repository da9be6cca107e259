"""The latents interface (flowvae/latents): named codes, per-group posterior / prior / KL, ancestral
sampling, the conditioning each Glow level gets, and loading weights written before it existed."""
import re

import pytest
import torch

from flowvae import load_config
from flowvae.checkpoint import upgrade_optimizer_state, upgrade_state_dict
from flowvae.config import ConfigError
from flowvae.latents import LatentGroup, Latents
from flowvae.objective import Objective

from conftest import TINY, randomize_

KINDS = {
    "none": ["model.type=glow"],
    "global": [],
    "hierarchical-normal": ["model.injection=hierarchical", "model.hier_prior=normal"],
    "hierarchical-topdown": ["model.injection=hierarchical", "model.hier_prior=topdown"],
    "hierarchical-ladder": ["model.injection=hierarchical", "model.hier_prior=topdown", "model.hier_posterior=ladder"],
}


@pytest.mark.parametrize("kind", list(KINDS))
def test_structure_layout_and_conditioning(make_model, images, kind):
    model = make_model(*KINDS[kind], z_path_std=0.1)
    lat = model.latents
    assert lat.kind == {"none": "none", "global": "global"}.get(kind, "hierarchical")
    shapes = lat.shapes()
    expected = {} if kind == "none" else {"global": (4,)}
    if kind.startswith("hierarchical"):  # TINY: 8x8 images, 2 levels, 2 channels per level latent
        expected.update({"level0": (2, 4, 4), "level1": (2, 2, 2)})
    assert shapes == expected and lat.dim == model.code_dim == sum(torch.Size(s).numel() for s in expected.values())
    # the flat code is the named code's groups side by side, in layout order
    flat = torch.randn(3, lat.dim)
    named = lat.unflatten(flat)
    assert list(named) == list(expected) and torch.equal(lat.flatten(named) if named else flat, flat)
    with pytest.raises(ValueError, match="a code must have shape"):
        lat.unflatten(torch.zeros(3, lat.dim + 1))
    # what the Glow gets: the global code as a vector, each level latent as its level's map
    vec, maps = lat.conditioning(named)
    assert (vec is None) == (kind == "none") and (maps is None) == (not kind.startswith("hierarchical"))
    if maps is not None:
        assert [tuple(m.shape[1:]) for m in maps] == [(2, 4, 4), (2, 2, 2)]
        assert maps[0] is named["level0"] and maps[1] is named["level1"]
    # posterior and KL: one entry per group, shapes as declared, KL per image >= 0 for Gaussians
    x = images(5)
    post = lat.posterior(model._centered(model._prepare(x)))
    assert list(post) == list(expected)
    given, code = lat.draw(post)
    assert list(given) == list(post) and list(code) == list(post)
    if kind != "hierarchical-ladder":  # q reads x alone: draw hands the posterior back as it is
        assert all(given[n][0] is post[n][0] and given[n][1] is post[n][1] for n in post)
    kl = lat.kl(given, code)
    for name, (per_image, per_dim) in kl.items():
        assert per_image.shape == (5,) and (per_image >= 0).all()
        assert per_dim.shape == (5, torch.Size(expected[name]).numel())
    if "global" in kl:  # the analytic KL against N(0, I), checked against torch.distributions
        mu, log_sigma = post["global"]
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, log_sigma.exp()),
                                                torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu)))
        assert torch.allclose(kl["global"][1], ref, atol=1e-5) and torch.allclose(kl["global"][0], ref.sum(1), atol=1e-4)
    # the model's terms sum the groups' KL (the posterior mean as the code)
    t = model.terms(model._prepare(x), deterministic=True, posterior=post)
    mean_kl = lat.kl(*lat.draw(post, deterministic=True))
    assert torch.allclose(t["kl_total"], sum(v[0] for v in mean_kl.values()) if kl else torch.zeros(5))


def test_topdown_sampling_is_ancestral_and_holds_fixed_groups(make_model):
    model = make_model(*KINDS["hierarchical-topdown"])
    lat = model.latents
    randomize_(lat, 0.3, seed=2, only=lambda n: n.startswith("groups."))
    assert lat.order == ["global", "level1", "level0"]  # parents first
    g = torch.Generator().manual_seed(0)
    a = lat.sample(4, generator=g)
    # holding the global code and re-drawing the levels: level1's prior moves with the held global code
    b = lat.sample(4, fixed={"global": a["global"]}, generator=torch.Generator().manual_seed(1))
    assert torch.equal(b["global"], a["global"]) and not torch.equal(b["level1"], a["level1"])
    # the same noise for level1 with another global code gives another level1 (p(z_1 | z) is not N(0, I))
    noise = {"level1": torch.randn(4, 2, 2, 2)}
    c1 = lat.sample(4, fixed={"global": a["global"]}, noise=noise)
    c2 = lat.sample(4, fixed={"global": -a["global"]}, noise=noise)
    assert not torch.allclose(c1["level1"], c2["level1"])
    # held children stay as they were when a parent is re-drawn
    d = lat.sample(4, fixed={"global": None, "level1": a["level1"], "level0": a["level0"]})
    assert torch.equal(d["level0"], a["level0"]) and torch.equal(d["level1"], a["level1"])


class _Chain(LatentGroup):
    def __init__(self, parent):
        super().__init__()
        self.shape, self.parent = (2,), parent


def test_groups_must_name_known_parents_without_cycles():
    with pytest.raises(ValueError, match="unknown parent"):
        Latents(None, {"a": _Chain("missing")})
    with pytest.raises(ValueError, match="cycle"):
        Latents(None, {"a": _Chain("b"), "b": _Chain("a")})
    assert Latents(None, {"child": _Chain("root"), "root": _Chain(None)}).order == ["root", "child"]


def test_loss_section_and_moved_keys():
    cfg = load_config(None, TINY + ["loss.kl_beta=0.25", "loss.kl_warmup_steps=4"])
    assert cfg.loss.kl_beta == 0.25
    # keys from before the loss: section still load, from overrides, YAML files and checkpoints' configs
    old = load_config(None, TINY + ["model.kl_beta=0.5", "model.free_bits=0.1", "train.kl_warmup_steps=3", "model.tc_weight=2"])
    assert (old.loss.kl_beta, old.loss.free_bits, old.loss.kl_warmup_steps, old.loss.tc_weight) == (0.5, 0.1, 3, 2.0)
    with pytest.raises(ConfigError, match="loss.free_bits"):
        load_config(None, TINY + ["loss.free_bits=-1"])
    with pytest.raises(ConfigError, match="did you mean 'kl_beta'"):
        load_config(None, TINY + ["loss.kl_bata=1"])
    # a dict of model keys, as older code wrote them, keeps its loss keys too
    from dataclasses import asdict

    from flowvae import FlowVAE

    model = FlowVAE.from_config({**asdict(load_config(None, TINY).model), "kl_beta": 0.3})
    assert model.objective.cfg.kl_beta == 0.3 and FlowVAE.from_config(cfg).objective.cfg.kl_beta == 0.25
    obj = Objective(cfg.loss)
    assert [obj.kl_scale(s) for s in (0, 1, 3, 10)] == [0.0625, 0.125, 0.25, 0.25] and obj.kl_scale() == 0.25
    assert obj.free_bits("global") == cfg.loss.free_bits and obj.free_bits("level0") == cfg.loss.level_free_bits


# ------------------------------------------------------- weights written before the latents interface
def _to_old_layout(sd: dict, levels: int) -> dict:
    """Today's state dict under the names and in the parameter order flowvae used before the latents
    interface: encoder.* (with the global head), prior.*, latents.heads.*, latents.td_nets.*, latents.td_top.*."""
    def old(k):
        m = re.match(r"latents\.groups\.level(\d+)\.(head|prior_net)\.(.*)", k)
        if m:
            lvl = int(m[1])
            if m[2] == "head":
                return f"latents.heads.{lvl}.{m[3]}"
            return f"latents.td_top.{m[3]}" if lvl == levels - 1 else f"latents.td_nets.{lvl}.{m[3]}"
        for new, was in (("latents.groups.global.head.", "encoder.head."), ("latents.encoder.", "encoder."),
                         ("latents.groups.global.prior.", "prior.")):
            if k.startswith(new):
                return was + k[len(new):]
        return k

    def rank(item):  # glow, encoder trunk, encoder head, prior, level heads, top-down nets, the rest
        k = item[0]
        for i, prefix in enumerate(("glow.", "encoder.head.", "encoder.", "prior.", "latents.heads.",
                                    "latents.td_nets.", "latents.td_top.")):
            if k.startswith(prefix):
                return (0, 2, 1, 3, 4, 5, 6)[i]
        return 7

    return dict(sorted(((old(k), v) for k, v in sd.items()), key=rank))  # stable: order kept within a rank


@pytest.mark.parametrize("kind", ["global", "hierarchical-topdown"])
def test_old_layout_weights_and_optimiser_state_load(make_model, images, kind):
    model = make_model(*KINDS[kind], z_path_std=0.1)
    randomize_(model.latents, 0.2, seed=3)
    opt = torch.optim.Adamax(model.parameters(), lr=1e-3)
    model.loss(images(4))["loss"].backward()
    opt.step()
    sd = model.state_dict()
    old_sd = _to_old_layout(sd, model.cfg.levels)
    assert any(k.startswith("latents.heads.") for k in old_sd) == kind.startswith("hier")
    assert not any(k.startswith("latents.groups.") for k in old_sd)
    # the optimiser state as the old code saved it: numbered by the old parameter order
    names = [n for n, _ in model.named_parameters()]
    params = set(names)
    old_names = [n for n in (list(upgrade_state_dict(old_sd, model.cfg))) if n in params]
    new_sd = opt.state_dict()
    old_opt = {"state": {old_names.index(names[i]): s for i, s in new_sd["state"].items()},
               "param_groups": new_sd["param_groups"]}
    if kind.startswith("hier"):
        assert old_names != names  # the orders differ: a plain load would pair state with the wrong tensors
    # upgraded names load into a fresh model and give the same outputs; the optimiser state lands on
    # the parameters it belongs to
    fresh = make_model(*KINDS[kind], seed=9)
    fresh.load_state_dict(upgrade_state_dict(old_sd, model.cfg))
    for (n, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), n
    got = upgrade_optimizer_state(old_opt, old_sd, fresh)
    for i, p in enumerate(fresh.parameters()):
        assert got["state"][i]["exp_avg"].shape == p.shape
        assert torch.equal(got["state"][i]["exp_avg"], new_sd["state"][i]["exp_avg"])
