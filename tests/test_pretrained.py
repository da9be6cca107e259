"""The model shipped in the package: it loads by name from the API and the CLI, is the trained model
its metrics file describes (a fresh model would score ~8 bits/dim), and its codes behave."""
from __future__ import annotations

import json
from pathlib import Path

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


@pytest.mark.parametrize("old,new", [("fashion_mnist_v2", "pretrained:fashion_mnist"),
                                     ("fashion_mnist_hier", "pretrained:fashion_mnist_hierarchical_small"),
                                     ("fashion_mnist_codes", "pretrained:fashion_mnist")])
def test_retired_names_say_what_to_use(old, new, tmp_path, capsys):
    assert main(["sample", "--checkpoint", f"pretrained:{old}", "--out", str(tmp_path / "s.png")]) == 2
    err = capsys.readouterr().err
    assert "no longer shipped" in err and new in err


def test_every_shipped_model_says_what_it_is_and_how_it_was_trained():
    from flowvae.pretrained import info

    assert available() == ["fashion_mnist", "fashion_mnist_hierarchical", "fashion_mnist_hierarchical_small",
                           "fashion_mnist_levels", "fashion_mnist_swap"]
    for name in available():
        meta = info(name)
        assert meta["description"] and meta["trained_by"] and meta["eval_full"]["images"] == 10000


@pytest.mark.parametrize("name,levels", [("fashion_mnist", 0), ("fashion_mnist_hierarchical", 2),
                                         ("fashion_mnist_hierarchical_small", 2), ("fashion_mnist_levels", 2),
                                         ("fashion_mnist_swap", 2)])
def test_shipped_models_in_todays_layout(name, levels, sample_test):
    """Every shipped model: written with today's parameter names (one module per latent group), trained
    (a fresh model scores ~8 bits/dim), exact, and every latent group re-drawable."""
    from flowvae.checkpoint import read_checkpoint

    weights = read_checkpoint(f"pretrained:{name}")["model"]
    assert any(k.startswith("latents.groups.global.") for k in weights)
    assert not any(k.startswith(("encoder.", "prior.", "latents.heads.")) for k in weights)
    model, cfg, _ = load_checkpoint(f"pretrained:{name}")
    assert model.latents.names == ["global"] + [f"level{lvl}" for lvl in range(levels)]
    x = sample_test[torch.arange(32)][0]
    code, eps = model.encode(x)
    assert torch.equal(model.decode(code, eps), x)
    meta = json.loads((HERE / f"{name}.json").read_text())
    res = evaluate(model, sample_test, k=1, limit=128, progress=False)
    assert res["elbo_bpd"] < 4.8 and abs(res["elbo_bpd"] - meta["eval_full"]["elbo_bpd"]) < 0.2
    for group in ["global"] + list(range(levels)):
        assert not torch.equal(model.resample_level(x[:4], group, generator=torch.Generator().manual_seed(0)), x[:4])


# fashion_mnist_swap: a run of configs/fashion_mnist_levels.yaml with today's recipe keys, then a 4,000-step phase
# at other KL weights from its weights (experiments/global_swap/run_24k.sh): trained_by names both commands
SWAP_RECIPE = ["model.coupling_scale=sigmoid", "model.base_tail=2", "train.grad_clip=10"]
SWAP_PHASE = ["loss.kl_beta=0.3", "loss.level_kl_beta=[1,0.3]", "train.max_steps=13172"]
# fashion_mnist_hierarchical: the same recipe keys with a ladder posterior and a floored top-down prior, seed 2
LADDER = ["model.hier_posterior=ladder", "model.hier_prior_min_log_sigma=-1", "train.seed=2"]


@pytest.mark.parametrize("name,config,overrides", [("fashion_mnist", "fashion_mnist_24k.yaml", []),
                                                   ("fashion_mnist_hierarchical", "fashion_mnist_levels.yaml",
                                                    SWAP_RECIPE + LADDER),
                                                   ("fashion_mnist_hierarchical", "fashion_mnist_hierarchical.yaml", []),
                                                   ("fashion_mnist_hierarchical_small", "fashion_mnist_hierarchical_small.yaml",
                                                    []),
                                                   ("fashion_mnist_levels", "fashion_mnist_levels.yaml", []),
                                                   ("fashion_mnist_swap", "fashion_mnist_levels.yaml", SWAP_RECIPE + SWAP_PHASE)])
def test_shipped_models_were_trained_by_their_config(name, config, overrides):
    """The config file a shipped model names in trained_by, with the overrides its commands give, is its model
    and loss (and the step count)."""
    from flowvae.pretrained import info

    meta = info(name)
    assert f"configs/{config}" in meta["trained_by"]
    assert all(o in meta["trained_by"] for o in overrides if not o.startswith("train.max_steps"))
    want = load_config(Path(__file__).resolve().parents[1] / "configs" / config, overrides).to_dict()
    shipped = load_config(None, []).to_dict()
    for section in ("model", "loss"):
        shipped[section].update(meta["config"][section])
        assert shipped[section] == want[section], section
    assert meta["step"] == want["train"]["max_steps"]


def test_the_hierarchical_config_is_the_command_that_trained_the_shipped_model():
    """configs/fashion_mnist_hierarchical.yaml names, as one file, the command pretrained:fashion_mnist_hierarchical
    was trained by: configs/fashion_mnist_levels.yaml on today's recipe keys, the ladder, the floor and seed 2."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    named = load_config(configs / "fashion_mnist_hierarchical.yaml").to_dict()
    command = load_config(configs / "fashion_mnist_levels.yaml", SWAP_RECIPE + LADDER).to_dict()
    assert named == command


def test_the_24k_config_is_the_recommended_recipe_planned_longer():
    """configs/fashion_mnist_24k.yaml (pretrained:fashion_mnist) is configs/fashion_mnist.yaml with more steps:
    the bounds and the recipe measured at 9,172 steps are the ones the shipped model was trained with."""
    configs = Path(__file__).resolve().parents[1] / "configs"
    short = load_config(configs / "fashion_mnist.yaml").to_dict()
    long = load_config(configs / "fashion_mnist_24k.yaml").to_dict()
    assert long["train"].pop("max_steps") == 24000 and short["train"].pop("max_steps") == 9172
    assert long == short
