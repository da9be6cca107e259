"""End to end on real images (the Fashion-MNIST sample shipped in the package): training lowers
test bits/dim, and the exact-inverse promises hold for a trained model."""
from pathlib import Path

import pytest
import torch

from flowvae import FlowVAE, load_checkpoint, load_config
from flowvae.data import load_dataset
from flowvae.engine.evaluate import evaluate
from flowvae.engine.train import train

pytestmark = pytest.mark.slow

OVERRIDES = ["data.dataset=fashion_mnist_sample", "data.limit_test=256", "model.steps=3", "model.hidden=32",
             "model.z_dim=16", "model.encoder_width=16", "train.max_steps=150", "train.batch_size=32",
             "train.warmup_steps=20", "train.lr=2e-3", "train.eval_every=0", "train.checkpoint_every=0",
             "train.eval_images=256", "train.init_batch_size=256", "train.ema_decay=0.99"]


@pytest.fixture(scope="module", params=["global", "hierarchical"])
def trained(tmp_path_factory, request):
    """The same short run with each injection (hierarchical: top-down p(z_l | z_{l+1}))."""
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml",
                      OVERRIDES + [f"model.injection={request.param}", "model.hier_prior=topdown"])
    out = tmp_path_factory.mktemp("real") / "run"
    res = train(cfg, out, device="cpu", progress=False)
    model, cfg, _ = load_checkpoint(out)
    test = load_dataset(cfg.data, cfg.model, "test")
    return model, cfg, test, res


def test_training_lowers_test_bpd(trained):
    model, cfg, test, res = trained
    torch.manual_seed(0)
    untrained = FlowVAE.from_config(cfg.model)
    train_ds = load_dataset(cfg.data, cfg.model, "train")
    untrained.initialize(train_ds[torch.arange(256)][0])
    before = evaluate(untrained, test, k=1, progress=False)["elbo_bpd"]
    after = evaluate(model, test, k=1, progress=False)["elbo_bpd"]
    assert res["elbo_bpd"] == pytest.approx(after, abs=0.05)
    # Fashion-MNIST: an initialised Glow scores ~6 bpd here; 150 small steps get well under 5.
    assert after < before - 1.0, (before, after)


def test_exact_round_trip_and_swap_on_real_images(trained):
    model, _, test, _ = trained
    x = test[torch.arange(64)][0]
    z, eps = model.encode(x)
    assert torch.equal(model.decode(z, eps), x)
    assert torch.equal(model.swap(x, x), x)
    swapped = model.swap(x, x.roll(1, 0))
    assert not torch.equal(swapped, x)  # the global code changes the image
    for group in model.latent_groups():  # each latent group re-drawn alone also changes it
        level = "global" if group == "global" else int(group[len("level"):])
        assert not torch.equal(model.resample_level(x[:8], level, generator=torch.Generator().manual_seed(0)), x[:8])


def test_iw_bound_tighter_than_elbo_on_trained_model(trained):
    model, _, test, _ = trained
    x = test[torch.arange(32)][0]
    torch.manual_seed(1)
    elbo = torch.stack([model.log_prob(x, k=1) for _ in range(4)]).mean()
    iw = model.log_prob(x, k=32).mean()
    assert iw >= elbo  # log-likelihood bound: higher is tighter
