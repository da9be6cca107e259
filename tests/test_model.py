"""FlowVAE on tiny configs (1x8x8 images unless stated): the terms of the bound (their bits/dim
accounting and the importance-weighted bound: test_objective.py), codes and images, input validation,
flow prior, initialisation, gradients through z, checkpoints."""
from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

import flowvae
from flowvae import Config, ConfigError, load_config
from flowvae.checkpoint import CheckpointError
from flowvae.flows import ActNorm
from flowvae.flows.squeeze import squeeze2x2
from flowvae.objective import LN2
from conftest import randomize_head

pytestmark = pytest.mark.usefixtures("single_thread")


def std_normal_logprob(t):
    return Normal(0.0, 1.0).log_prob(t.double()).flatten(1).sum(1)


# ------------------------------------------------------------------ the terms of the bound
@pytest.mark.parametrize("kind", ["glow", "hybrid"])
@pytest.mark.parametrize("n_bits,channels", [(8, 1), (5, 3)])
def test_fresh_model_log_p_y_is_standard_normal(make_model, images, kind, n_bits, channels):
    # At init: ActNorm identity, InvConv a rotation (|det| = 1), couplings and priors identity
    # (zero-initialised), so the whole flow is orthogonal and log p(y) = sum_i log N(y_i; 0, 1).
    model = make_model(f"model.type={kind}", f"model.n_bits={n_bits}", f"model.image_channels={channels}")
    x = images(4, c=channels)
    t = model.terms(model._prepare(x), deterministic=True)
    y = (torch.div(x, 2 ** (8 - n_bits), rounding_mode="floor").double() + 0.5) / 2**n_bits - 0.5
    ref = std_normal_logprob(y)
    assert torch.allclose(t["log_p_y"].double(), ref, atol=1e-3, rtol=0)
    assert torch.allclose(t["eps"].flatten(1).norm(dim=1).double(), y.flatten(1).norm(dim=1), atol=1e-4)
    d = channels * 64
    assert model.num_dims == d
    bpd = model.bound.terms(t)
    assert torch.allclose(bpd["flow_bpd"].double(), (-ref + d * n_bits * LN2) / (d * LN2), atol=1e-5)
    assert torch.equal(t["log_q_u"], torch.zeros(4)) and torch.equal(bpd["dequant_bpd"], torch.zeros(4))


def test_analytic_kl_matches_torch_distributions(make_model, images):
    model = randomize_head(make_model())
    x = images(5)
    mu, log_sigma = model._posterior(model._prepare(x))
    ref = kl_divergence(Normal(mu, log_sigma.exp()), Normal(torch.zeros_like(mu), torch.ones_like(mu))).sum(1)
    out = model.loss(x)
    assert (ref > 0.1).all() and (log_sigma.abs() > 1e-3).any()
    assert torch.allclose(out["kl_nats"], ref, atol=1e-5)


# ------------------------------------------------------------------- codes and images
@pytest.mark.parametrize("n_bits", [8, 5])
@pytest.mark.parametrize("kind", ["hybrid", "glow"])
def test_decode_encode_round_trip_exact(make_model, images, kind, n_bits):
    x_raw = images(8)
    model = make_model(f"model.type={kind}", f"model.n_bits={n_bits}", z_path_std=0.1)
    model.initialize(x_raw)
    x = torch.div(x_raw, 2 ** (8 - n_bits), rounding_mode="floor") * 2 ** (8 - n_bits)
    z, eps = model.encode(x)
    assert eps.shape == x.shape and eps.dtype == torch.float32
    assert (z is None) == (kind == "glow")
    x_back = model.decode(z, eps)
    assert x_back.dtype == torch.uint8 and torch.equal(x_back, x)
    # the flow is not trivial: eps is not just the rescaled image
    y = (torch.div(x, 2 ** (8 - n_bits), rounding_mode="floor").float() + 0.5) / 2**n_bits - 0.5
    assert (eps - y).abs().max() > 0.1
    if n_bits < 8:  # values between levels decode to their level
        assert torch.equal(model.decode(*model.encode(x_raw)), x)


def test_swap(make_model, images):
    model = make_model(z_path_std=0.2)
    xa, xb = images(4, seed=1), images(4, seed=2)
    assert torch.equal(model.swap(xa, xa), xa)
    swapped = model.swap(xa, xb)
    assert swapped.dtype == torch.uint8 and swapped.shape == xa.shape
    assert (swapped != xa).float().mean() > 0.05
    with pytest.raises(ValueError, match="same number of images"):
        model.swap(xa, xb[:3])
    with pytest.raises(ValueError, match="flow-only"):
        make_model("model.type=glow").swap(xa, xb)


def test_sample(make_model):
    model = make_model(z_path_std=0.1)
    s = model.sample(5, temperature=0.7, z_temperature=1.0)
    assert s.dtype == torch.uint8 and s.shape == (5, 1, 8, 8)
    assert not torch.equal(model.sample(5), model.sample(5))
    cold = model.sample(3, temperature=0.0, z_temperature=0.0)
    assert torch.equal(cold, model.sample(3, temperature=0.0, z_temperature=0.0))
    assert torch.equal(cold, model.decode(torch.zeros(3, 4), torch.zeros(3, 1, 8, 8)))
    z = torch.randn(3, 4)  # a fixed code with temperature 0: deterministic, and z matters
    assert torch.equal(model.decode(z, torch.zeros(3, 1, 8, 8)), model.decode(z, torch.zeros(3, 1, 8, 8)))
    assert not torch.equal(model.decode(z * 3, torch.zeros(3, 1, 8, 8)), model.decode(z, torch.zeros(3, 1, 8, 8)))
    five = make_model("model.type=glow", "model.n_bits=5").sample(4)
    assert five.shape == (4, 1, 8, 8) and (five % 8 == 0).all()


def test_three_channel_images(make_model, images):
    model = make_model("model.image_channels=3", z_path_std=0.1)
    x = images(4, c=3)
    model.initialize(x)
    out = model.loss(x)
    assert torch.isfinite(out["loss"]) and out["elbo_bpd"].shape == (4,)
    out["loss"].backward()
    assert model.latents.encoder.stem.weight.grad.abs().sum() > 0
    assert torch.equal(model.decode(*model.encode(x)), x)
    assert model.sample(2).shape == (2, 3, 8, 8)


# ------------------------------------------------------------------------ bad inputs
def test_bad_images_raise(make_model, images):
    model = make_model()
    x = images(2)
    with pytest.raises(TypeError, match="uint8"):
        model.loss(x.float() / 255)
    with pytest.raises(ValueError, match=r"takes \[N, 1, 8, 8\] \(1 channel"):
        model.loss(images(2, c=3))
    with pytest.raises(ValueError, match=r"takes \[N, 1, 8, 8\].*8x8"):
        model.encode(images(2, size=16))
    with pytest.raises(ValueError, match="unsqueeze"):
        model.log_prob(x[0])
    with pytest.raises(ValueError, match="z must have shape"):
        model.decode(torch.zeros(2, 5), torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model.loss(x.numpy())


@pytest.mark.parametrize("overrides,match", [
    (["model.z_dimm=3"], "z_dim"),
    (["model.levels=abc"], "model.levels: expected an integer"),
    (["model.image_size=12", "model.levels=3"], "divisible by 2\\*\\*levels"),
    (["model.prior=flow", "model.z_dim=5"], "even model.z_dim"),
    (["model.type=vae"], "model.type must be one of"),
    (["modle.levels=2"], "model"),
])
def test_bad_config_raises(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides=overrides)


# ------------------------------------------------------------------------ flow prior
def test_flow_prior(make_model, images):
    model = make_model("model.prior=flow", z_path_std=0.1)
    randomize_head(model, std=0.2)
    x = images(4)
    out1, out2 = model.loss(x), model.loss(x)
    assert torch.isfinite(out1["loss"]) and torch.isfinite(out1["kl_nats"]).all()
    assert not torch.allclose(out1["kl_nats"], out2["kl_nats"])  # Monte-Carlo KL
    # At init the flow prior is the identity, so the MC KL is unbiased for the analytic one.
    many = x[:1].expand(4096, -1, -1, -1)
    with torch.no_grad():
        kl = model.loss(many)["kl_nats"].double()
        mu, ls = model._posterior(model._prepare(x[:1]))
    exact = (0.5 * (mu.pow(2) + (2 * ls).exp() - 1) - ls).sum().double()
    assert abs(kl.mean() - exact) < 4 * kl.std() / math.sqrt(4096) + 1e-3
    # a trained (here: randomised) prior is not N(0, I) any more, and still samples and scores
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.latents.groups["global"].prior.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)
    z = torch.randn(8, 4)
    assert not torch.allclose(model.latents.groups["global"].prior.log_prob(z), Normal(0.0, 1.0).log_prob(z).sum(1), atol=1e-3)
    assert torch.isfinite(model.loss(x)["loss"])
    s = model.sample(3, temperature=0.5, z_temperature=0.8)
    assert s.dtype == torch.uint8 and s.shape == (3, 1, 8, 8)
    assert torch.isfinite(model.log_prob(x, k=4)).all()


# --------------------------------------------------------------------------- init
def test_initialize(make_model, images):
    model = make_model(initialized=False)
    actnorms = [m for m in model.glow.modules() if isinstance(m, ActNorm)]
    before = [(a.bias.clone(), a.log_scale.clone()) for a in actnorms]
    x = images(32)
    assert not model.initialized and not any(bool(a.initialized) for a in actnorms)
    with pytest.raises(RuntimeError, match="never initialised"):  # garbage in, so refused: initialise first
        model.loss(x)
    torch.manual_seed(3)
    model.initialize(x)
    assert model.initialized and all(bool(a.initialized) for a in actnorms)
    for a, (b, s) in zip(actnorms, before):
        assert not torch.equal(a.bias, b) and not torch.equal(a.log_scale, s)
    # the first ActNorm standardised the batch it saw (uniform u drawn first, as in _terms)
    torch.manual_seed(3)
    x_int = model._prepare(x)
    y = (x_int + torch.rand_like(x_int)) / 256 - 0.5
    h = actnorms[0](squeeze2x2(y))[0].transpose(0, 1).flatten(1)
    assert torch.allclose(h.mean(1), torch.zeros(4), atol=1e-4)
    assert torch.allclose(h.std(1, unbiased=False), torch.ones(4), atol=1e-3)
    # and later forward passes leave the fitted parameters alone
    fitted = [p.clone() for a in actnorms for p in a.parameters()]
    model.loss(images(8, seed=5))
    assert all(torch.equal(a, b) for a, b in zip(fitted, [p for a in actnorms for p in a.parameters()]))


# ---------------------------------------------------------------------- gradients
def test_gradients_reach_encoder_through_the_flow(make_model, images):
    x = images(4)
    fresh = make_model()
    out = fresh.loss(x)
    g0, = torch.autograd.grad(out["flow_bpd"].mean(), fresh.latents.groups["global"].head.weight)
    assert torch.equal(g0, torch.zeros_like(g0))  # z enters through zero-initialised layers only
    model = make_model(z_path_std=0.1)
    out = model.loss(x)
    g_flow, = torch.autograd.grad(out["flow_bpd"].mean(), model.latents.groups["global"].head.weight, retain_graph=True)
    g_kl, = torch.autograd.grad(out["kl_bpd"].mean(), model.latents.groups["global"].head.weight, retain_graph=True)
    out["loss"].backward()
    assert g_flow.abs().max() > 1e-6
    assert torch.allclose(model.latents.groups["global"].head.weight.grad, g_flow + g_kl, atol=1e-7)
    assert (model.latents.groups["global"].head.weight.grad - g_kl).abs().max() > 1e-6


# -------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(make_model, images, tmp_path):
    x = images(4)
    model = make_model("model.dequantization=variational", z_path_std=0.1)
    model.initialize(x)
    randomize_head(model)
    cfg = Config(model=model.cfg)
    sd = {"module." + k: v for k, v in model.state_dict().items()}  # as saved from a DDP wrapper
    path = tmp_path / "run" / "checkpoint.pt"
    flowvae.save_checkpoint(path, {"model": sd, "ema": None, "config": cfg.to_dict(), "step": 3})
    assert path.is_file() and not (tmp_path / "run" / "checkpoint.pt.tmp").exists()
    for where in (path, path.parent):  # the file, or the run directory holding it
        loaded, cfg2, state = flowvae.load_checkpoint(where)
        assert state["step"] == 3 and cfg2.model == model.cfg and not loaded.training
        assert loaded.initialized
        z, eps = model.encode(x)
        z2, eps2 = loaded.encode(x)
        assert torch.equal(z, z2) and torch.equal(eps, eps2)
        torch.manual_seed(11)
        a = model.log_prob(x, k=3)
        torch.manual_seed(11)
        assert torch.equal(a, loaded.log_prob(x, k=3))
    assert not any(k.startswith("module.") for k in torch.load(path, weights_only=True)["model"])
    # a file written by other code straight from a DDP/compiled wrapper still loads
    raw = tmp_path / "raw.pt"
    torch.save({"model": {"_orig_mod." + k: v for k, v in sd.items()}, "config": cfg.to_dict()}, raw)
    assert torch.equal(flowvae.load_checkpoint(raw)[0].encode(x)[1], model.encode(x)[1])
    # EMA weights are preferred when present, unless ema=False
    other = make_model("model.dequantization=variational", seed=1, z_path_std=0.1)
    flowvae.save_checkpoint(path, {"model": model.state_dict(), "ema": other.state_dict(), "config": cfg.to_dict()})
    with_ema, _, _ = flowvae.load_checkpoint(path)
    without, _, _ = flowvae.load_checkpoint(path, ema=False)
    assert torch.equal(with_ema.encode(x)[1], other.encode(x)[1])
    assert torch.equal(without.encode(x)[1], model.encode(x)[1])


def test_checkpoint_errors(make_model, tmp_path):
    model = make_model()
    cfg = Config(model=model.cfg).to_dict()
    good = tmp_path / "good.pt"
    flowvae.save_checkpoint(good, {"model": model.state_dict(), "ema": None, "config": cfg})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a checkpoint\n" * 10)
    for bad in (truncated, garbage):
        with pytest.raises(CheckpointError, match="not a readable flowvae checkpoint.*truncated"):
            flowvae.load_checkpoint(bad)
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        flowvae.load_checkpoint(tmp_path / "missing.pt")
    no_config = tmp_path / "no_config.pt"
    torch.save({"model": model.state_dict()}, no_config)
    with pytest.raises(CheckpointError, match="lacks 'model' or 'config'"):
        flowvae.load_checkpoint(no_config)
    wrong = tmp_path / "wrong.pt"
    cfg_wrong = Config(model=make_model("model.z_dim=6").cfg).to_dict()
    flowvae.save_checkpoint(wrong, {"model": model.state_dict(), "ema": None, "config": cfg_wrong})
    with pytest.raises(CheckpointError, match="do not match"):
        flowvae.load_checkpoint(wrong)


# ------------------------------------------------------------------ arguments the API refuses
def test_decode_rejects_non_finite_codes_and_images(make_model, images):
    model = make_model()
    z, eps = model.encode(images(3))
    for bad_z, bad_eps in ((z, eps.clone().index_fill_(0, torch.tensor([1]), float("nan"))),
                           (z.clone().fill_(float("inf")), eps)):
        with pytest.raises(ValueError, match="NaN or inf"):
            model.decode(bad_z, bad_eps)
    with pytest.raises(TypeError, match="decode takes codes"):
        model.decode(z, images(3))
    with pytest.raises(ValueError, match="temperature must be a finite number >= 0"):
        model.sample(2, temperature=float("nan"))
    with pytest.raises(ValueError, match="z_temperature must be a finite number >= 0"):
        model.sample(2, z_temperature=-1.0)


def test_an_uninitialised_model_is_refused(images):
    model = flowvae.FlowVAE.from_config(load_config(None, ["model.image_size=8", "model.levels=2", "model.steps=1",
                                                           "model.hidden=8", "model.z_dim=4"]).model)
    for call in (lambda: model.loss(images(2)), lambda: model.encode(images(2)), lambda: model.log_prob(images(2))):
        with pytest.raises(RuntimeError, match=r"never initialised: call model.initialize\(x\)"):
            call()
    model.initialize(images(16))
    assert torch.isfinite(model.loss(images(2))["loss"])


def test_api_arguments_are_checked(make_model, images):
    model = make_model()
    for n in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="n must be >= 1 and an integer"):
            model.sample(n)
    with pytest.raises(ValueError, match="k must be >= 1 and an integer"):
        model.log_prob(images(2), k=2.5)
    x = images(2)
    with pytest.raises(TypeError, match="x_local must be a torch.Tensor"):
        model.swap([x], [x])
    with pytest.raises(TypeError, match="from_config takes a Config"):
        flowvae.FlowVAE.from_config("hybrid")
    assert flowvae.FlowVAE.from_config(load_config(None, ["model.z_dim=8"])).cfg.z_dim == 8  # a whole Config too
