"""Configuration: typed dataclasses loaded from YAML, with ``section.key=value`` overrides.

Unknown sections or keys, and values of the wrong type, raise ConfigError with
the closest valid name, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml


class ConfigError(ValueError):
    pass


@dataclass
class ModelConfig:
    type: str = "hybrid"            # hybrid (VAE + conditional Glow) | glow (flow only, the baseline)
    image_channels: int = 1
    image_size: list = field(default_factory=lambda: [28, 28])  # [H, W] (an int means square)
    n_bits: int = 8
    levels: int = 2                 # Glow levels L (H and W must be divisible by 2**L)
    steps: int = 8                  # flow steps K per level
    hidden: int = 128               # coupling network width
    coupling_clamp: float = 2.0     # |log scale| bound of each coupling
    z_dim: int = 64                 # global code size
    encoder_width: int = 64
    encoder_blocks: int = 1         # residual blocks per resolution
    prior: str = "normal"           # normal (analytic KL) | flow (normflows RealNVP, Monte-Carlo KL)
    prior_layers: int = 2
    prior_hidden: int = 256
    dequantization: str = "uniform"  # uniform | variational
    dequant_layers: int = 4
    dequant_hidden: int = 32
    kl_beta: float = 1.0            # weight on the KL in the *training* loss only; reported bounds use 1
    free_bits: float = 0.0          # nats per z dim below which the KL is not penalised (training loss only)


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | fashion_mnist_sample | mnist | cifar10 | celeba | folder
    root: str = ""                  # local path; empty = the dataset's default location
    download: bool = False          # only download when asked
    image_size: int = 0             # resize (celeba, folder); 0 = native size
    channels: int = 0               # folder: 1 (grey) or 3 (RGB); 0 = the model's image_channels
    test_fraction: float = 0.1      # folder without train/ and test/ subfolders: held-out fraction
    limit_train: int = 0            # use only the first N training images (0 = all)
    limit_test: int = 0
    workers: int = 0


@dataclass
class TrainConfig:
    batch_size: int = 64
    optimizer: str = "adamax"       # adamax | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 500
    grad_clip: float = 50.0
    ema_decay: float = 0.999
    max_steps: int = 10000
    max_minutes: float = 0.0        # wall-clock budget (0 = none); training stops at whichever limit comes first
    init_batch_size: int = 512      # images for ActNorm's data-dependent initialisation
    checkpoint_every: int = 1000
    log_every: int = 50
    eval_every: int = 1000
    eval_images: int = 1000         # test images for the periodic evaluation
    seed: int = 0
    threads: int = 0                # torch CPU threads (0 = torch's default)


@dataclass
class EvalConfig:
    k: int = 128                    # importance samples for iw{K}_bpd
    batch_size: int = 64
    limit: int = 0                  # evaluate only the first N test images (0 = all)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: cannot parse {value!r}: {e}") from None
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or float(value) != int(value):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, list):
        if isinstance(value, int) and not isinstance(value, bool):
            return [value, value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value) and len(value) == len(default):
            return list(value)
        raise ConfigError(f"{where}: expected an int or a list of {len(default)} ints, got {value!r}")
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value


def _unknown(name: str, valid: Iterable[str], where: str) -> ConfigError:
    close = difflib.get_close_matches(name, list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else f" (valid: {', '.join(sorted(valid))})"
    return ConfigError(f"unknown config key {where}{name!r}{hint}")


def _set(section_obj: Any, section: str, key: str, value: Any) -> None:
    names = {f.name for f in dataclasses.fields(section_obj)}
    if key not in names:
        raise _unknown(key, names, f"{section}.")
    setattr(section_obj, key, _coerce(value, getattr(section_obj, key), f"{section}.{key}"))


def config_from_dict(d: dict) -> Config:
    cfg = Config()
    if not isinstance(d, dict):
        raise ConfigError(f"a config must be a mapping of sections, got {type(d).__name__}")
    for section, values in d.items():
        if section not in _SECTIONS:
            raise _unknown(section, _SECTIONS, "")
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping")
        for key, value in values.items():
            _set(getattr(cfg, section), section, key, value)
    validate(cfg)
    return cfg


def apply_overrides(cfg: Config, overrides: Optional[Iterable[str]]) -> Config:
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        path, value = item.split("=", 1)
        if "." not in path:
            raise ConfigError(f"override {item!r} must name a section, e.g. model.{path}={value}")
        section, key = path.split(".", 1)
        if section not in _SECTIONS:
            raise _unknown(section, _SECTIONS, "")
        _set(getattr(cfg, section), section, key, value)
    validate(cfg)
    return cfg


def load_config(path: Union[str, Path, None] = None, overrides: Optional[Iterable[str]] = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    if path is None:
        cfg = Config()
    else:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file not found: {p} (the shipped configs are in configs/)")
        try:
            d = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML: {e}") from None
        cfg = config_from_dict(d)
    return apply_overrides(cfg, overrides)


def validate(cfg: Config) -> None:
    m = cfg.model
    choices = {"model.type": (m.type, ("hybrid", "glow")), "model.prior": (m.prior, ("normal", "flow")),
               "model.dequantization": (m.dequantization, ("uniform", "variational")),
               "train.optimizer": (cfg.train.optimizer, ("adamax", "adamw"))}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name} must be one of {allowed}, got {value!r}")
    if m.image_channels not in (1, 3):
        raise ConfigError(f"model.image_channels must be 1 or 3, got {m.image_channels}")
    if not 1 <= m.n_bits <= 8:
        raise ConfigError(f"model.n_bits must be in 1..8, got {m.n_bits}")
    if m.levels < 1 or m.steps < 1 or m.hidden < 1:
        raise ConfigError("model.levels, model.steps and model.hidden must be >= 1")
    h, w = m.image_size
    if h % 2**m.levels or w % 2**m.levels:
        raise ConfigError(f"model.image_size {h}x{w} must be divisible by 2**levels = {2**m.levels}")
    if m.type == "hybrid" and m.z_dim < 1:
        raise ConfigError("model.z_dim must be >= 1 for a hybrid model")
    if m.prior == "flow" and m.z_dim % 2:
        raise ConfigError(f"model.prior=flow needs an even model.z_dim, got {m.z_dim}")
    if cfg.train.batch_size < 1 or cfg.eval.k < 1:
        raise ConfigError("train.batch_size and eval.k must be >= 1")
