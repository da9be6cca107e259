"""Configs (flowvae/config.py): loading YAML files, overrides, and the messages of every rejection."""
from pathlib import Path

import pytest

from flowvae import load_config
from flowvae.config import ConfigError, ConfigNotFound
from flowvae.errors import FlowVAEError

TINY = str(Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml")


def test_a_config_file_and_its_overrides():
    cfg = load_config(TINY, ["train.lr=5e-4", "model.z_dim=3"])
    assert cfg.train.lr == 5e-4 and cfg.model.z_dim == 3 and cfg.data.dataset == "fashion_mnist_sample"


@pytest.mark.parametrize("override", ["train.lr=inf", "model.coupling_clamp=inf", "train.lr=nan", "loss.kl_beta=inf"])
def test_non_finite_settings_are_rejected(override):
    with pytest.raises(ConfigError, match=f"{override.split('=')[0]} must be a finite number"):
        load_config(TINY, [override])


def test_unknown_keys_get_a_valid_hint():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.learning_rate=1e-3"])
    assert str(e.value) == "unknown config key train.learning_rate (did you mean 'lr'?)"
    with pytest.raises(ConfigError, match=r"did you mean model\.z_dim\?"):
        load_config(None, ["train.z_dim=3"])
    with pytest.raises(ConfigError) as e:
        load_config(None, ["lr=1e-3"])
    hint = str(e.value).rsplit("e.g. ", 1)[1]
    assert hint == "train.lr=1e-3"
    assert load_config(None, [hint]).train.lr == 1e-3  # the hint itself is valid


def test_overrides_must_be_a_list():
    with pytest.raises(TypeError, match=r"use overrides=\['a.b=1'\]"):
        load_config(overrides="a.b=1")


def test_a_missing_config_file(tmp_path):
    with pytest.raises(ConfigNotFound, match="config file not found") as e:
        load_config(tmp_path / "nope.yaml")
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, FlowVAEError)


def test_a_directory_as_config_says_so_and_lists_its_configs(tmp_path):
    (tmp_path / "a.yaml").write_text("train: {lr: 1.0e-3}\n")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    msg = str(e.value)
    assert "is a directory, not a YAML file" in msg and "a.yaml" in msg and "not found" not in msg


def test_files_that_are_not_yaml_configs(tmp_path):
    png = tmp_path / "x.yaml"
    png.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe" + bytes(64))
    with pytest.raises(ConfigError, match="not a text file"):
        load_config(png)
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just a string\n")
    with pytest.raises(ConfigError, match="must be a mapping of sections"):
        load_config(scalar)


@pytest.mark.parametrize("overrides, ok", [
    (["model.split_prior=code"], False),                                   # a global code has no map to read
    (["model.split_prior=code", "model.type=glow"], False),
    (["model.split_prior=code", "model.injection=hierarchical"], True),
    (["model.split_prior=code", "model.z_maps=4"], True),
    (["model.split_prior=codes"], False),
])
def test_split_prior_from_the_codes_alone_needs_a_spatial_code(overrides, ok):
    if ok:
        assert load_config(TINY, overrides).model.split_prior == "code"
    else:
        with pytest.raises(ConfigError, match="split_prior"):
            load_config(TINY, overrides)
