"""Training-loop behaviour: non-finite steps are skipped and counted, budgets stop training, warm-up, EMA."""
import json
from pathlib import Path

import torch

from flowvae import FlowVAE, load_checkpoint, load_config
from flowvae.engine.train import EMA, build_optimizer, train

from conftest import poisoned_loss

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"
FAST = ["train.eval_every=0", "train.checkpoint_every=0", "train.eval_images=32", "train.max_steps=8"]


def test_non_finite_steps_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.setattr(FlowVAE, "loss", poisoned_loss({3, 5}))
    res = train(load_config(TINY, FAST), tmp_path / "run", device="cpu", progress=False)
    assert res["skipped_steps"] == 2 and res["step"] == 8
    model, _, state = load_checkpoint(tmp_path / "run", ema=False)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert state["skipped_steps"] == 2


def test_wall_clock_budget_stops_training(tmp_path):
    cfg = load_config(TINY, FAST + ["train.max_steps=100000", "train.max_minutes=0.05"])
    res = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert 0 < res["step"] < 100000
    assert res["train_minutes"] >= 0.05
    assert json.loads((tmp_path / "run" / "train_metrics.json").read_text())["step"] == res["step"]


def test_warmup_schedule_and_optimizers():
    cfg = load_config(TINY, ["train.warmup_steps=4", "train.lr=1e-2"])
    model = FlowVAE.from_config(cfg.model)
    opt, sched = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.Adamax)
    lrs = []
    for _ in range(6):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs == [2.5e-3, 5e-3, 7.5e-3, 1e-2, 1e-2, 1e-2]
    cfg = load_config(TINY, ["train.optimizer=adamw", "train.weight_decay=0.01"])
    assert isinstance(build_optimizer(cfg, model)[0], torch.optim.AdamW)


def test_ema_tracks_parameters_with_ramped_decay():
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin, decay=0.9)
    start = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)  # first update: decay min(0.9, 1/10) = 0.1
    assert torch.allclose(ema.model.weight, start + 0.9, atol=1e-6)
    for _ in range(200):
        ema.update(lin)
    assert torch.allclose(ema.model.weight, lin.weight, atol=1e-4)
    assert not ema.model.weight.requires_grad


def test_bad_training_settings_are_rejected():
    import pytest

    from flowvae import ConfigError

    for bad, msg in (("train.grad_clip=0", "grad_clip"), ("model.coupling_clamp=0", "coupling_clamp"),
                     ("train.log_every=0", "log_every"), ("eval.batch_size=0", "eval.batch_size"),
                     ("data.limit_train=-5", "limit_train"), ("train.max_steps=.inf", "max_steps"),
                     ("train.ema_decay=1.0", "ema_decay"), ("data.channels=2", "data.channels")):
        with pytest.raises(ConfigError, match=msg):
            load_config(TINY, [bad])


def test_resume_applies_new_lr_and_refuses_changed_data_order(tmp_path):
    from flowvae.cli import main

    out = str(tmp_path / "run")
    assert main(["train", "--config", str(TINY), "--out", out, "--no-progress", *FAST]) == 0
    assert main(["train", "--out", out, "--resume", "--no-progress", "train.batch_size=16", "train.max_steps=10"]) == 2
    assert main(["train", "--out", out, "--resume", "--no-progress", "train.lr=1e-4", "train.max_steps=10"]) == 0
    _, _, state = load_checkpoint(out)
    assert state["step"] == 10
    assert all(g["lr"] == 1e-4 and g["initial_lr"] == 1e-4 for g in state["optimizer"]["param_groups"])
    # the training loss's weights may change on resume; the architecture may not
    assert main(["train", "--out", out, "--resume", "--no-progress", "model.kl_beta=0.5", "train.max_steps=12"]) == 0
    _, cfg, state = load_checkpoint(out)
    assert state["step"] == 12 and cfg.loss.kl_beta == 0.5
    assert main(["train", "--out", out, "--resume", "--no-progress", "model.hidden=4", "train.max_steps=14"]) == 2


def test_every_shipped_config_loads_and_builds():
    import pytest

    configs = sorted((TINY.parent).glob("*.yaml"))
    assert {p.stem for p in configs} >= {"tiny", "quickstart", "fashion_mnist", "mnist", "cifar10", "celeba64"}
    for path in configs:
        cfg = load_config(path)
        model = FlowVAE.from_config(cfg.model)
        assert model.image_shape == (cfg.model.image_channels, *cfg.model.image_size), path.name
    big = FlowVAE.from_config(load_config(TINY.parent / "cifar10.yaml").model)
    assert len(big.glow.level_steps) == 3 and all(len(s) == 32 for s in big.glow.level_steps)
    assert big.glow.level_steps[0][0].layers[2].net.conv2.out_channels == 512
    with pytest.raises(FileNotFoundError):
        load_config(TINY.parent / "nope.yaml")
