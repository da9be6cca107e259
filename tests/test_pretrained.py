"""The model shipped in the package: it loads by name from the API and the CLI, is the trained model
its metrics file describes (a fresh model would score ~8 bits/dim), and its codes behave."""
from __future__ import annotations

import json

import pytest
import torch

from flowvae import load_checkpoint
from flowvae.cli import main
from flowvae.config import load_config
from flowvae.data import load_dataset
from flowvae.engine.evaluate import evaluate
from flowvae.pretrained import HERE, available

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def shipped():
    model, cfg, state = load_checkpoint("pretrained:fashion_mnist")
    return model, cfg, state


@pytest.fixture(scope="module")
def sample_test():
    cfg = load_config(None, ["data.dataset=fashion_mnist_sample", "model.image_size=28"])
    return load_dataset(cfg.data, cfg.model, "test")


def test_shipped_model_is_trained_and_exact(shipped, sample_test):
    model, cfg, state = shipped
    assert "fashion_mnist" in available() and cfg.model.type == "hybrid"
    assert "optimizer" not in state  # weights, config and metrics only
    x = sample_test[torch.arange(64)][0]
    code, eps = model.encode(x)
    assert torch.equal(model.decode(code, eps), x)
    res = evaluate(model, sample_test, k=1, limit=256, progress=False)
    meta = json.loads((HERE / "fashion_mnist.json").read_text())
    # the sample's test images are the first 1,000 of the full test set the metrics were measured on
    assert res["elbo_bpd"] < 4.6 and abs(res["elbo_bpd"] - meta["eval_full"]["elbo_bpd"]) < 0.15


def test_shipped_model_from_the_cli(tmp_path, capsys):
    out = tmp_path / "swap.png"
    assert main(["swap", "--checkpoint", "pretrained:fashion_mnist", "--n", "4", "--out", str(out),
                 "data.dataset=fashion_mnist_sample"]) == 0
    assert out.stat().st_size > 0
    assert main(["sample", "--checkpoint", "pretrained:nope", "--out", str(tmp_path / "s.png")]) == 2
    assert "no pretrained model 'nope'" in capsys.readouterr().err
