"""The training recipe's pieces: the cosine lr schedule over steps or wall-clock minutes, and the EMA
(public lerp_ calls, decay ramp)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from flowvae import load_config
from flowvae.config import ConfigError
from flowvae.engine.train import EMA, lr_factor


def test_lr_factor_constant_and_cosine_over_steps_or_minutes():
    t = load_config(None, overrides=["train.max_steps=100"]).train
    assert lr_factor(t, 50, 1e9) == 1.0  # constant: the default
    t = load_config(None, overrides=["train.max_steps=100", "train.lr_schedule=cosine"]).train
    assert lr_factor(t, 0, 0.0) == 1.0
    assert math.isclose(lr_factor(t, 50, 0.0), 0.5)
    assert lr_factor(t, 100, 0.0) == 0.0 and lr_factor(t, 150, 0.0) == 0.0
    t = load_config(None, overrides=["train.max_steps=1000000", "train.lr_schedule=cosine", "train.max_minutes=10"]).train
    assert math.isclose(lr_factor(t, 10, 300.0), 0.5)  # the wall-clock budget ends the run first
    assert math.isclose(lr_factor(t, 10, 150.0), 0.5 * (1 + math.cos(math.pi / 4)))
    with pytest.raises(ConfigError, match="lr_schedule"):
        load_config(None, overrides=["train.lr_schedule=linear"])


def test_ema_update_is_the_ramped_average():
    model = nn.Linear(3, 2)
    ema = EMA(model, decay=0.999)
    start = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)  # first update: decay min(0.999, 1/10) = 0.1
    for e, s, p in zip(ema.model.parameters(), start, model.parameters()):
        assert torch.allclose(e, 0.1 * s + 0.9 * p)
    raw = EMA(model, decay=0.0)  # ema_decay 0: evaluation uses the raw weights
    with torch.no_grad():
        model.weight.mul_(3)
    raw.update(model)
    assert torch.equal(raw.model.weight, model.weight)
