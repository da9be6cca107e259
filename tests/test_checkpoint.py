"""Checkpoints (flowvae/checkpoint.py): finding, reading and matching them, with one clear line for every
file that is not one, and torch files the user gives (checkpoints, masks) loaded safely."""
from pathlib import Path

import pytest
import torch

from flowvae import FlowVAE, load_checkpoint, load_config
from flowvae.checkpoint import CheckpointError, CheckpointNotFound, checkpoint_file, read_checkpoint, save_checkpoint
from flowvae.errors import FlowVAEError

from conftest import TINY


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A checkpoint of a tiny model (no training needed to test reading it)."""
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    model = FlowVAE.from_config(cfg)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.pt"
    save_checkpoint(path, {"model": model.state_dict(), "ema": None, "config": cfg.to_dict(), "step": 0})
    return path


def test_a_checkpoint_loads(ckpt):
    model, cfg, state = load_checkpoint(ckpt.parent)  # the run directory or the file
    assert cfg.model.z_dim == 4 and state["step"] == 0 and not model.training


def test_checkpoint_paths_that_are_directories(tmp_path):
    (tmp_path / "r" / "checkpoint.pt").mkdir(parents=True)
    with pytest.raises(CheckpointError) as e:
        checkpoint_file(tmp_path / "r")
    assert "checkpoint.pt is a directory" in str(e.value) and "checkpoint.pt/checkpoint.pt" not in str(e.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointNotFound) as e:
        checkpoint_file(tmp_path / "empty")
    assert "no checkpoint in" in str(e.value) and "checkpoint.pt/" not in str(e.value)


def test_missing_checkpoints_are_user_errors_and_file_not_found(tmp_path):
    for path in (tmp_path / "missing.pt", "pretrained:no_such_model", "pretrained:fashion_mnist_v2"):
        with pytest.raises(CheckpointNotFound) as e:
            checkpoint_file(path)
        assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, FlowVAEError)
    with pytest.raises(CheckpointNotFound, match="superseded by pretrained:fashion_mnist,"):
        checkpoint_file("pretrained:fashion_mnist_v2")  # a retired name says what replaced it


def test_checkpoint_with_an_unknown_config_key(ckpt, tmp_path):
    state = read_checkpoint(ckpt)
    state["config"]["model"]["no_such_key"] = 1
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError, match="the config stored in this checkpoint"):
        load_checkpoint(tmp_path / "c.pt")


def test_checkpoint_of_another_architecture_is_one_short_line(ckpt, tmp_path):
    state = read_checkpoint(ckpt)
    state["config"]["model"]["hidden"] = 24  # the weights were made with hidden=8
    save_checkpoint(tmp_path / "c.pt", state)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "c.pt")
    msg = str(e.value)
    assert "\n" not in msg and len(msg) < 600 and "of another shape" in msg


def test_unsafe_pickles_never_advise_weights_only_false(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {}, "payload": Path("x")}, path)  # an object a safe load refuses
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(path)
    assert "weights_only=False" not in str(e.value) and "safe load" in str(e.value)
    assert "WeightsUnpickler" not in str(e.value)


def test_an_image_passed_as_a_checkpoint_is_called_an_image(tmp_path):
    from PIL import Image

    png = tmp_path / "grid.png"
    Image.new("L", (28, 28)).save(png)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(png)
    msg = str(e.value)
    assert "it is a PNG image" in msg and "safe load" not in msg and "run directory" in msg
