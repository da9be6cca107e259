"""Mixed precision: bf16 autocast keeps the bound's float32 parts float32, agrees with fp32 on the same
batch and weights, and leaves encode/decode exact; bf16 and fp16 (with its gradient scaler) train."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowvae import FlowVAE, load_checkpoint, load_config
from flowvae.data import load_dataset
from flowvae.engine.train import train

from conftest import is_z_path, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
BF16 = dict(device_type="cpu", dtype=torch.bfloat16)
# bf16 keeps 8 significant bits (relative rounding 2^-9 ~ 2e-3) in the coupling networks and the encoder;
# everything summed into the bound is float32. Measured on this model and batch over 10 seeds of the
# (u, z) draws: batch-mean loss differs by <= 1.6e-4 bits/dim, single images by <= 1.4e-3 bits/dim, the
# KL by <= 2e-5 bits/dim (two versions of the coupling code). Tolerances: 1e-3 (mean) and 1e-2 (any image) bits/dim, ~6-7x the measurement
# and far below what a bf16-accumulated log-det or prior would cost (a bf16 sum of ~1200 nats is off by ~5).
MEAN_TOL, IMAGE_TOL = 1e-3, 1e-2
# A bf16 network cannot be inverted bit-exactly: the inverse feeds it inputs that differ from the forward
# pass's by float32 rounding, which can flip a bf16 rounding (2^-9 relative). Measured: <= 1.3e-3 in y
# (pixel bins are 1/256 = 3.9e-3 wide) and log-dets cancelling to <= 7.5e-6 relative, so the Glow's round trip
# under autocast is checked to 1e-2 and 1e-4, and encode/decode (which run outside autocast) exactly.
ROUND_TRIP_TOL, LOGDET_REL_TOL = 1e-2, 1e-4
# bf16 vs fp32 log-det of the whole Glow: measured <= 0.5 nats per image (of ~1200): checked to 2 nats.
LOGDET_TOL = 2.0


@pytest.fixture(scope="module")
def trained():
    """A small Fashion-MNIST model after some training, so the couplings, priors and encoder all matter."""
    torch.manual_seed(0)
    cfg = load_config(TINY, ["model.hidden=32", "model.steps=2"])
    model = FlowVAE.from_config(cfg.model)
    x = load_dataset(cfg.data, cfg.model, "train")[torch.arange(256)][0]
    model.initialize(x)
    randomize_(model.glow, 0.05, seed=1, only=is_z_path)
    opt = torch.optim.Adamax(model.parameters(), lr=2e-3)
    for i in range(12):
        with torch.autocast(**BF16):  # trained in bf16 mode
            loss = model.loss(x[(i % 8) * 32:(i % 8 + 1) * 32])["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bf16_loss_agrees_with_fp32(trained, seed):
    model, x = trained
    xb = x[:64]
    torch.manual_seed(seed)
    ref = model.loss(xb)
    torch.manual_seed(seed)  # the same draws of u and z
    with torch.autocast(**BF16):
        low = model.loss(xb)
    for key in ("loss", "elbo_bpd", "flow_bpd", "kl_bpd", "kl_nats"):
        assert low[key].dtype == torch.float32, key
    assert abs(low["loss"].item() - ref["loss"].item()) < MEAN_TOL
    assert (low["elbo_bpd"] - ref["elbo_bpd"]).abs().max().item() < IMAGE_TOL
    assert torch.allclose(low["kl_bpd"], ref["kl_bpd"], atol=IMAGE_TOL)
    # and the reduced precision really ran: bf16 is not bitwise fp32
    assert not torch.equal(low["elbo_bpd"], ref["elbo_bpd"])


def test_log_dets_and_latents_stay_float32_under_autocast(trained):
    model, x = trained
    y = torch.rand(8, 1, 28, 28) - 0.5
    z = torch.randn(8, model.cfg.z_dim)
    with torch.autocast(**BF16):
        eps, logdet = model.glow(y, z)
        y_back, logdet_inv = model.glow.inverse(eps, z)
    assert eps.dtype == logdet.dtype == y_back.dtype == logdet_inv.dtype == torch.float32
    assert (y_back - y).abs().max().item() < ROUND_TRIP_TOL
    assert (logdet + logdet_inv).abs().max().item() < LOGDET_REL_TOL * logdet.abs().max().item()
    ref, ref_ld = model.glow(y, z)
    assert (logdet - ref_ld).abs().max().item() < LOGDET_TOL
    assert not torch.equal(eps, ref)  # the networks did run in bf16


def test_decode_encode_exact_in_bf16_mode(trained):
    model, x = trained
    with torch.autocast(**BF16):  # what a user running the model under autocast hits
        z, eps = model.encode(x[:64])
        assert torch.equal(model.decode(z, eps), x[:64])
        assert torch.equal(model.swap(x[:16], x[:16]), x[:16])


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_training_in_reduced_precision(tmp_path, precision):
    cfg = load_config(TINY, ["train.max_steps=6", "train.eval_every=0", "train.checkpoint_every=0", "train.eval_images=32",
                             "train.threads=1", f"train.precision={precision}", "train.grad_accum=2"])
    res = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert res["step"] == 6 and res["elbo_bpd"] < 8.0
    model, cfg2, state = load_checkpoint(tmp_path / "run")
    assert cfg2.train.precision == precision and state["precision"] == precision
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in model.parameters())
    if precision == "fp16":
        assert state["scaler"] is not None and state["scaler"]["scale"] > 0  # the gradient scaler ran and is saved
    else:
        assert state["scaler"] is None
    x = load_dataset(cfg.data, cfg.model, "test")[torch.arange(8)][0]
    assert torch.equal(model.decode(*model.encode(x)), x)


def test_bad_precision_and_accumulation_are_rejected():
    from flowvae import ConfigError

    with pytest.raises(ConfigError, match="precision"):
        load_config(TINY, ["train.precision=fp8"])
    with pytest.raises(ConfigError, match="divisible by train.grad_accum"):
        load_config(TINY, ["train.grad_accum=5"])


def test_evaluation_and_level_priors_stay_float32_inside_autocast(make_model, images):
    """A user's autocast block does not change reported bounds, and the hierarchical top-down priors
    keep float32 parameters under autocast (like the Glow's split / top priors)."""
    from conftest import randomize_
    from flowvae.data.datasets import TensorImages
    from flowvae.engine.evaluate import evaluate

    model = make_model("model.injection=hierarchical", "model.hier_prior=topdown", z_path_std=0.1)
    randomize_(model.latents, 0.2, seed=1)
    ds = TensorImages(images(32), torch.zeros(32, dtype=torch.long), "random")
    plain = evaluate(model, ds, k=2, batch_size=16, progress=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = evaluate(model, ds, k=2, batch_size=16, progress=False)
        code = model.latents.sample(4)
        top, fine = model.latents.groups["level1"], model.latents.groups["level0"]
        mu, ls = top.prior_params(code["global"], 4, code["global"].device)
        mu0, ls0 = fine.prior_params(code["level1"], 4, code["global"].device)
    assert inside["elbo_bpd"] == plain["elbo_bpd"] and inside["iw2_bpd"] == plain["iw2_bpd"]
    assert {mu.dtype, ls.dtype, mu0.dtype, ls0.dtype} == {torch.float32}
    ref_mu, _ = top.prior_params(code["global"], 4, code["global"].device)
    assert torch.equal(mu, ref_mu)  # computed in float32, not rounded through bf16
