"""The decoupling levers (z decoded to spatial maps, coupling kernel and steps per level, free bits per
level latent, KL warm-up) and the per-group measurements of ``flowvae analyze`` built on them."""
from __future__ import annotations

import pytest
import torch

from conftest import randomize_
from flowvae import load_config
from flowvae.config import ConfigError
from flowvae.engine.analyze import PixelJudge, group_effects, local_detail
from flowvae.objective import LN2

pytestmark = pytest.mark.usefixtures("single_thread")

LEVERS = ["model.z_maps=3", "model.coupling_kernels=[3,1]", "model.level_steps=[2,1]"]


@pytest.mark.parametrize("injection", ["global", "hierarchical"])
def test_levers_round_trip_exactly_and_z_maps_carry_z(make_model, images, injection):
    model = make_model(*LEVERS, f"model.injection={injection}", "model.hier_prior=topdown", z_path_std=0.2)
    randomize_(model.glow.z_decoder, 0.5, seed=3)
    x = images(6)
    model.initialize(x)
    code, eps = model.encode(x)
    assert torch.equal(model.decode(code, eps), x)
    assert torch.equal(model.swap(x, x), x)
    assert [len(s) for s in model.glow.level_steps] == [2, 1]
    assert [s[0].layers[2].net.kernel for s in model.glow.level_steps] == [3, 1]
    # z reaches the flow through its decoded maps: with the channel-bias and linear routes cut,
    # changing z still changes the decoded image.
    with torch.no_grad():
        for name, p in model.glow.named_parameters():
            if "cond_proj" in name:
                p.zero_()
    other = code.clone()
    other[:, : model.cfg.z_dim] += 2.0
    assert (model.decode(other, eps) != x).float().mean() > 0.1


def test_kernel1_flow_is_local(make_model):
    """With 1x1 couplings and split priors, a change in one 4x4 block leaves eps of far blocks unchanged:
    the flow cannot model the global layout on its own."""
    model = make_model("model.type=glow", "model.coupling_kernels=[1,1]", "model.image_size=16")
    randomize_(model.glow, 0.2, seed=1)
    y = torch.rand(1, 1, 16, 16) - 0.5
    y2 = y.clone()
    y2[..., :4, :4] += 0.3  # the top-left 4x4 block: one pixel of the coarsest level
    e1, _ = model.glow(y, None)
    e2, _ = model.glow(y2, None)
    changed = (e1 - e2).abs() > 1e-6
    assert changed[..., :4, :4].any() and not changed[..., 4:, :].any() and not changed[..., :, 4:].any()
    # and the default 3x3 couplings do spread it
    model3 = make_model("model.type=glow", "model.image_size=16")
    randomize_(model3.glow, 0.2, seed=1)
    f1, _ = model3.glow(y, None)
    f2, _ = model3.glow(y2, None)
    assert ((f1 - f2).abs() > 1e-6)[..., 8:, 8:].any()


def test_level_free_bits_change_the_training_loss_only(make_model, images):
    x = images(8)
    losses = {}
    for fb in (0.0, 5.0):
        model = make_model("model.injection=hierarchical", f"loss.level_free_bits={fb}", z_path_std=0.1)
        model.initialize(x)
        torch.manual_seed(1)
        out = model.loss(x)
        losses[fb] = out
    # the bound per image is the same; the floor (5 nats per level dim, far above a fresh posterior's KL) raises the loss
    assert torch.allclose(losses[0.0]["elbo_bpd"], losses[5.0]["elbo_bpd"])
    dims = 2 * 4 * 4 + 2 * 2 * 2
    kl_levels = sum(losses[0.0][f"kl_level{l}_nats"] for l in range(2)).mean()
    expected = losses[0.0]["loss"] + (5.0 * dims - kl_levels) / (64 * LN2)
    assert torch.allclose(losses[5.0]["loss"], expected, atol=1e-4)


def test_kl_warmup_weight(make_model, images):
    model = make_model(z_path_std=0.1)
    x = images(8)
    model.initialize(x)
    torch.manual_seed(1)
    full = model.loss(x)
    torch.manual_seed(1)
    none = model.loss(x, kl_weight=0.0)
    assert torch.allclose(none["loss"], (full["flow_bpd"] + full["dequant_bpd"]).mean())
    assert torch.allclose(full["loss"], full["elbo_bpd"].mean())
    assert full["kl_bpd"].mean() > 0


@pytest.mark.parametrize("overrides, match", [
    (["model.coupling_kernels=[3]"], "one entry per level"),
    (["model.coupling_kernels=[3,5]"], "1 or 3"),
    (["model.level_steps=[2,0]"], ">= 1"),
    (["model.z_maps=4", "model.type=glow"], "hybrid"),
    (["loss.level_free_bits=-1"], "level_free_bits"),
    (["loss.kl_warmup_steps=-5"], "kl_warmup_steps"),
])
def test_lever_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_local_detail_measures_brightness_and_texture():
    flat = torch.full((1, 1, 8, 8), 100, dtype=torch.uint8)
    bright = torch.full((1, 1, 8, 8), 200, dtype=torch.uint8)
    checker = flat.clone()
    checker[..., ::2, ::2] = 160
    b, t = local_detail(torch.cat([flat, bright, checker]))
    assert b[1] > b[0] and t[0] == 0 and t[1] == 0 and t[2] > 10


class _Judge:
    """A judge that labels an image by its mean brightness (two classes)."""

    def predict(self, x):
        return (x.float().flatten(1).mean(1) > 127).long()


def test_group_effects(make_model, images):
    model = make_model("model.injection=hierarchical", z_path_std=0.3)
    randomize_(model.latents, 0.2, seed=1)
    x = images(12, seed=4)
    model.initialize(x)
    y = _Judge().predict(x)
    judges = {"a": _Judge(), "b": _Judge()}
    # swapping a group with the image itself changes nothing: every label stays the local image's
    swaps, res = group_effects(model, x, y, x, y, judges, batch=5, seed=0, progress=False)
    assert list(swaps) == ["code", "global", "level0", "level1"] and list(res) == ["global", "level0", "level1"]
    for sw in swaps.values():
        assert sw["to_global_class"]["a"] == 1.0 and sw["to_local_class"]["b"] == 1.0
    for r in res.values():  # resampling draws new codes: pixels move
        assert r["mean_abs_pixel_change"] > 0 and 0 <= r["class_change"]["a"] <= 1
    # a dark A and a bright B: the judge follows whatever the swap produces, consistently for both keys
    xa = (images(6, seed=5) // 4)
    xb = 192 + images(6, seed=6) // 4
    ya, yb = _Judge().predict(xa), _Judge().predict(xb)
    swaps, _ = group_effects(model, xa, ya, xb, yb, judges, batch=4, seed=0, progress=False)
    full = model.swap(xa, xb)
    assert swaps["code"]["to_global_class"]["a"] == (_Judge().predict(full) == yb).float().mean().item()


def test_pixel_judge_learns_separable_classes():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (200,), generator=g)
    x = (torch.rand(200, 1, 4, 4, generator=g) * 100 + 100 * y[:, None, None, None]).to(torch.uint8)
    judge = PixelJudge(x[:150], y[:150])
    assert (judge.predict(x[150:]) == y[150:]).float().mean() > 0.95
