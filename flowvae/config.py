"""Configuration: typed dataclasses loaded from YAML, with ``section.key=value`` overrides.

Unknown sections or keys, and values of the wrong type, raise ConfigError with
the closest valid name, so a typo never silently trains the wrong model.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import yaml

from .errors import FlowVAEError

NO_PRIOR_FLOOR = -10.0  # model.hier_prior_min_log_sigma's "no floor": the lower end of every latent's log-sigma clamp


class ConfigError(FlowVAEError, ValueError):
    """A config that cannot describe a run: an unknown key, a value of the wrong type or range, a bad file."""


class ConfigNotFound(ConfigError, FileNotFoundError):
    """No config file at the given path."""


@dataclass
class ModelConfig:
    type: str = "hybrid"            # hybrid (VAE + conditional Glow) | glow (flow only, the baseline)
    image_channels: int = 1
    image_size: list = field(default_factory=lambda: [28, 28])  # [H, W] (an int means square)
    n_bits: int = 8
    levels: int = 2                 # Glow levels L (H and W must be divisible by 2**L)
    steps: int = 8                  # flow steps K per level
    level_steps: list = field(default_factory=list)       # steps per level, finest first ([] = `steps` everywhere)
    coupling_kernels: list = field(default_factory=list)  # coupling kernel (1 or 3) per level, finest first ([] = 3)
    coupling_impl: str = "auto"     # auto (gemm on CPU, conv on CUDA) | gemm | conv: how the coupling nets run (same weights)
    hidden: int = 128               # coupling network width
    coupling_clamp: float = 2.0     # |log scale| bound of each coupling
    shift_clamp: float = 0.0        # soft |shift| bound of each coupling, b*tanh(shift/b) (0 = unbounded, older models)
    coupling_scale: str = "tanh"    # each coupling's log-scale: c*tanh(raw/c) (tanh) | Glow's sigmoid scale, in (-c, 0) (sigmoid)
    z_dim: int = 64                 # global code size
    z_maps: int = 0                 # channels of a spatial map decoded from z for every level (0 = z as a channel bias only)
    injection: str = "global"       # global (z only) | hierarchical (z plus a spatial z_l per Glow level)
    hier_channels: int = 2          # hierarchical: channels of each level's latent z_l [C, H/2^(l+1), W/2^(l+1)]
    hier_prior: str = "normal"      # hierarchical: p(z_l) = N(0, I) (normal) | top-down p(z_l | z_{l+1}) (topdown)
    hier_hidden: int = 32           # hierarchical: width of the top-down prior networks
    hier_posterior: str = "bottomup"  # hierarchical, top-down prior: q(z_l | x) (bottomup) | merged with p(z_l | z_{l+1}) (ladder)
    hier_prior_min_log_sigma: float = NO_PRIOR_FLOOR  # hierarchical, top-down prior: floor on log sigma of p(z_l | parent) (-10 = none)
    split_prior: str = "kept"       # each split prior reads the kept half and the codes (kept) | the codes alone (code)
    base_tail: float = 0.0          # the code eps's density: N(0, I) (0), or normal with linear tails beyond |eps| = k (k > 0)
    encoder_width: int = 64
    encoder_blocks: int = 1         # residual blocks per resolution
    prior: str = "normal"           # normal (analytic KL) | flow (normflows RealNVP, Monte-Carlo KL)
    prior_layers: int = 2
    prior_hidden: int = 256
    dequantization: str = "uniform"  # uniform | variational
    dequant_layers: int = 4
    dequant_hidden: int = 32


@dataclass
class LossConfig:
    """The training loss (objective.py). Reported bounds (elbo_bpd, iw{K}_bpd) never use these: they are
    always the true bound. A run may change any of them on --resume."""
    kl_beta: float = 1.0            # weight on the KL
    level_kl_beta: list = field(default_factory=list)  # hierarchical: one weight per level code z_l (level 0 first) instead of kl_beta
    free_bits: float = 0.0          # nats per global-code dim below which its KL is not penalised
    level_free_bits: float = 0.0    # the same, per dim of each level latent z_l (hierarchical)
    kl_warmup_steps: int = 0        # the KL weight ramps linearly from 0 to kl_beta over these steps
    kl_warmup_order: str = "together"  # together | coarse_first | staggered (per level code: Objective.warmup_steps)
    tc_weight: float = 0.0          # Factor-VAE gamma: gamma * TC(z) (discriminator estimate, flowvae/tc.py)


@dataclass
class DataConfig:
    dataset: str = "fashion_mnist"  # fashion_mnist | fashion_mnist_sample | mnist | cifar10 | celeba | folder | array (flowvae prepare)
    root: str = ""                  # local path; empty = the dataset's default location
    download: bool = False          # only download when asked
    image_size: int = 0             # resize (celeba, folder); 0 = native size
    channels: int = 0               # folder: 1 (grey) or 3 (RGB); 0 = the model's image_channels
    test_fraction: float = 0.1      # folder without train/ and test/ subfolders: held-out fraction
    limit_train: int = 0            # use only the first N training images (0 = all)
    limit_test: int = 0
    exclude_classes: list = field(default_factory=list)  # labels dropped from both splits (leave-one-class-out)
    workers: int = 0


# train.max_steps=0 plans the step count at the end of the warm-up, timed over at least this many steps.
MIN_PLANNING_STEPS = 20


@dataclass
class TrainConfig:
    batch_size: int = 64
    optimizer: str = "adamax"       # adamax | adamw
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 500         # the lr rises linearly over these steps
    lr_schedule: str = "constant"   # constant | cosine: after warm-up, the lr decays to 0 at the planned step count
    grad_clip: float = 50.0
    ema_decay: float = 0.999        # 0: no average, evaluation uses the trained weights
    max_steps: int = 10000          # the planned step count (the run's length and the lr schedule's); 0: plan it
                                    # from max_minutes at the end of the warm-up (printed, kept by --resume)
    max_minutes: float = 0.0        # time in training steps after which the run stops early (0 = none); never changes the lr
    init_batch_size: int = 512      # images for ActNorm's data-dependent initialisation
    checkpoint_every: int = 1000
    log_every: int = 50
    eval_every: int = 1000
    eval_images: int = 1000         # test images for the periodic evaluation
    seed: int = 0
    threads: int = 0                # torch CPU threads: 0 = auto (1, robust on a busy machine; README), -1 = torch's default
    max_skip_fraction: float = 0.5  # stop when more than this share of a run's steps had a non-finite loss (1 = never)
    max_skipped_in_a_row: int = 100  # stop when this many steps in a row had a non-finite loss (0 = never)
    precision: str = "fp32"         # fp32 | bf16 | fp16 (autocast; log-dets, priors, KL and loss stay float32)
    grad_accum: int = 1             # micro-batches per step per process; batch_size stays the global batch
    memory: str = "standard"        # standard | recompute (rebuild activations from the flow's outputs) | checkpoint


@dataclass
class EvalConfig:
    k: int = 128                    # importance samples for iw{K}_bpd
    batch_size: int = 64
    limit: int = 0                  # evaluate only the first N test images (0 = all)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
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
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or float(value) != int(value):
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
    if isinstance(default, list) and where in _NUMBER_LISTS:  # a per-level list of numbers (checked in validate)
        items = value if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
            return [float(v) for v in items]
        raise ConfigError(f"{where}: expected a list of numbers (one per level), got {value!r}")
    if isinstance(default, list) and not default:  # a per-level list of ints, any length (checked in validate)
        if isinstance(value, int) and not isinstance(value, bool):
            return [value]
        if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return list(value)
        raise ConfigError(f"{where}: expected a list of ints (one per level), got {value!r}")
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


# Names people reach for that are spelled differently here (difflib cannot guess these).
_ALIASES = {"learning_rate": "lr", "learningrate": "lr", "num_threads": "threads", "steps": "max_steps",
            "epochs": "max_steps", "iterations": "max_steps", "batch": "batch_size", "bs": "batch_size",
            "clamp": "coupling_clamp", "zdim": "z_dim", "latent_dim": "z_dim", "bits": "n_bits",
            "channels": "image_channels", "size": "image_size", "dataset_name": "dataset", "path": "root",
            "data_dir": "root", "minutes": "max_minutes", "precision_mode": "precision", "k_samples": "k"}


# Keys that lived in another section in earlier versions (configs and checkpoints written then still load).
_NUMBER_LISTS = {"loss.level_kl_beta"}  # list keys of floats; every other list key holds ints
_MOVED = {("model", "kl_beta"): "loss", ("model", "free_bits"): "loss", ("model", "level_free_bits"): "loss",
          ("model", "tc_weight"): "loss", ("train", "kl_warmup_steps"): "loss"}


def _section_keys(section: str) -> set[str]:
    return {f.name for f in dataclasses.fields(_SECTIONS[section]())}


def _unknown(name: str, valid: Iterable[str], where: str) -> ConfigError:
    """'unknown config key train.learning_rate (did you mean 'lr'?)', with a hint that is itself valid."""
    valid = sorted(valid)
    alias = _ALIASES.get(name.lower())
    close = [alias] if alias in valid else difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    section = where.rstrip(".")
    if close:
        hint = f" (did you mean {close[0]!r}?)"
    elif section in _SECTIONS:  # the key may belong to another section: train.z_dim -> model.z_dim
        homes = [s for s in _SECTIONS if name in _section_keys(s)]
        hint = (f" (did you mean {homes[0]}.{name}?)" if homes
                else f" (valid {section}.* keys: {', '.join(valid)})")
    else:
        hint = f" (valid: {', '.join(valid)})"
    return ConfigError(f"unknown config key {where}{name}{hint}")


def _set(section_obj: Any, section: str, key: str, value: Any, cfg: Optional["Config"] = None) -> None:
    if (section, key) in _MOVED and cfg is not None:  # e.g. model.kl_beta -> loss.kl_beta
        section = _MOVED[(section, key)]
        section_obj = getattr(cfg, section)
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
            _set(getattr(cfg, section), section, key, value, cfg)
    validate(cfg)
    return cfg


def _check_overrides(overrides) -> list:
    if overrides is None:
        return []
    if isinstance(overrides, (str, bytes)):
        raise TypeError(f"overrides must be a list of 'section.key=value' strings, got the string {overrides!r}; "
                        f"use overrides=[{overrides!r}]")
    try:
        items = list(overrides)
    except TypeError:
        raise TypeError(f"overrides must be a list of 'section.key=value' strings, got {type(overrides).__name__}") from None
    for item in items:
        if not isinstance(item, str):
            raise TypeError(f"each override must be a 'section.key=value' string, got {item!r}")
    return items


def apply_overrides(cfg: Config, overrides: Optional[Iterable[str]]) -> Config:
    for item in _check_overrides(overrides):
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value, e.g. train.lr=5e-4")
        path, value = item.split("=", 1)
        if "." not in path:
            homes = [s for s in _SECTIONS if path in _section_keys(s)]
            example = f"{homes[0]}.{path}={value}" if homes else f"train.lr={value}"
            raise ConfigError(f"override {item!r} must name its section ({', '.join(_SECTIONS)}), e.g. {example}")
        section, key = path.split(".", 1)
        if section not in _SECTIONS:
            raise _unknown(section, _SECTIONS, "")
        _set(getattr(cfg, section), section, key, value, cfg)
    validate(cfg)
    return cfg


def _read_yaml(p: Path) -> Any:
    if p.is_dir():
        inside = sorted(q.name for q in p.glob("*.y*ml"))
        hint = f"; it holds {', '.join(inside[:6])}" if inside else ""
        raise ConfigError(f"config {p} is a directory, not a YAML file{hint} (the shipped configs are configs/*.yaml)")
    if not p.is_file():
        raise ConfigNotFound(f"config file not found: {p} (the shipped configs are in configs/)")
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"config {p} is not a text file; give a YAML config (configs/*.yaml)") from None
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None


def load_config(path: Union[str, Path, None] = None, overrides: Optional[Iterable[str]] = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply ``key=value`` overrides."""
    if path is None:
        cfg = Config()
    else:
        cfg = config_from_dict(_read_yaml(Path(path).expanduser()))
    return apply_overrides(cfg, overrides)


def validate(cfg: Config) -> None:
    for section in _SECTIONS:  # inf and nan are never meaningful settings (inf lr, inf clamp: every step skipped)
        for f in dataclasses.fields(getattr(cfg, section)):
            v = getattr(getattr(cfg, section), f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConfigError(f"{section}.{f.name} must be a finite number, got {v}")
    m = cfg.model
    choices = {"model.type": (m.type, ("hybrid", "glow")), "model.prior": (m.prior, ("normal", "flow")),
               "model.dequantization": (m.dequantization, ("uniform", "variational")),
               "model.injection": (m.injection, ("global", "hierarchical")),
               "model.hier_prior": (m.hier_prior, ("normal", "topdown")),
               "model.hier_posterior": (m.hier_posterior, ("bottomup", "ladder")),
               "model.split_prior": (m.split_prior, ("kept", "code")),
               "model.coupling_impl": (m.coupling_impl, ("auto", "gemm", "conv")),
               "model.coupling_scale": (m.coupling_scale, ("tanh", "sigmoid")),
               "loss.kl_warmup_order": (cfg.loss.kl_warmup_order, ("together", "coarse_first", "staggered")),
               "train.memory": (cfg.train.memory, ("standard", "recompute", "checkpoint")),
               "train.optimizer": (cfg.train.optimizer, ("adamax", "adamw")),
               "train.lr_schedule": (cfg.train.lr_schedule, ("constant", "cosine")),
               "train.precision": (cfg.train.precision, ("fp32", "bf16", "fp16"))}
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
    if m.shift_clamp < 0:
        raise ConfigError(f"model.shift_clamp must be >= 0 (0 = unbounded shifts), got {m.shift_clamp}")
    if not m.base_tail >= 0:
        raise ConfigError(f"model.base_tail must be 0 (a normal base) or > 0 (linear tails beyond |eps| = k), "
                          f"got {m.base_tail}")
    if m.type == "hybrid" and m.z_dim < 1:
        raise ConfigError("model.z_dim must be >= 1 for a hybrid model")
    if m.injection == "hierarchical" and m.type != "hybrid":
        raise ConfigError("model.injection=hierarchical needs model.type=hybrid (a flow-only Glow has no encoder)")
    if m.injection == "hierarchical" and (m.hier_channels < 1 or m.hier_hidden < 1):
        raise ConfigError(f"model.hier_channels and model.hier_hidden must be >= 1, got {m.hier_channels}, {m.hier_hidden}")
    if m.hier_posterior == "ladder" and not (m.injection == "hierarchical" and m.hier_prior == "topdown"):
        raise ConfigError("model.hier_posterior=ladder merges each level's posterior with its top-down prior: "
                          "it needs model.injection=hierarchical and model.hier_prior=topdown")
    if m.hier_prior_min_log_sigma != NO_PRIOR_FLOOR and not (m.injection == "hierarchical" and m.hier_prior == "topdown"):
        raise ConfigError("model.hier_prior_min_log_sigma floors the top-down prior's scale: "
                          "it needs model.injection=hierarchical and model.hier_prior=topdown")
    if not NO_PRIOR_FLOOR <= m.hier_prior_min_log_sigma <= 0.0:
        raise ConfigError(f"model.hier_prior_min_log_sigma must be in [-10, 0] (-10 = no floor), got {m.hier_prior_min_log_sigma}")
    if m.split_prior == "code" and not (m.type == "hybrid" and (m.injection == "hierarchical" or m.z_maps > 0)):
        raise ConfigError("model.split_prior=code needs a spatial code for the split priors to read: "
                          "model.injection=hierarchical or model.z_maps > 0")
    for name, vals, ok in (("model.level_steps", m.level_steps, lambda v: v >= 1),
                           ("model.coupling_kernels", m.coupling_kernels, lambda v: v in (1, 3))):
        if vals and len(vals) != m.levels:
            raise ConfigError(f"{name} needs one entry per level (model.levels={m.levels}), got {vals}")
        if not all(ok(v) for v in vals):
            raise ConfigError(f"{name} entries must be {'>= 1' if 'steps' in name else '1 or 3'}, got {vals}")
    if m.z_maps < 0 or (m.z_maps and m.type != "hybrid"):
        raise ConfigError(f"model.z_maps must be >= 0, and needs model.type=hybrid, got {m.z_maps}")
    if cfg.loss.tc_weight and m.type != "hybrid":
        raise ConfigError(f"loss.tc_weight={cfg.loss.tc_weight} needs model.type=hybrid (a flow-only Glow has no code z)")
    lb = cfg.loss.level_kl_beta
    if lb and (m.type != "hybrid" or m.injection != "hierarchical" or len(lb) != m.levels
               or not all(isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 for v in lb)):
        raise ConfigError(f"loss.level_kl_beta needs model.injection=hierarchical and one weight >= 0 per level "
                          f"(model.levels={m.levels}, level 0 first), got {lb}")
    if m.prior == "flow" and m.z_dim % 2:
        raise ConfigError(f"model.prior=flow needs an even model.z_dim, got {m.z_dim}")
    t, e, d = cfg.train, cfg.eval, cfg.data
    positive = {"train.batch_size": t.batch_size, "train.log_every": t.log_every,
                "train.init_batch_size": t.init_batch_size, "train.lr": t.lr, "train.grad_accum": t.grad_accum, "eval.k": e.k,
                "eval.batch_size": e.batch_size, "model.coupling_clamp": m.coupling_clamp,
                "model.encoder_width": m.encoder_width, "model.encoder_blocks": m.encoder_blocks}
    for name, v in positive.items():
        if not v > 0:
            raise ConfigError(f"{name} must be > 0, got {v}")
    non_negative = {"train.max_steps": t.max_steps, "train.checkpoint_every": t.checkpoint_every, "train.eval_every": t.eval_every,
                    "train.eval_images": t.eval_images, "train.max_minutes": t.max_minutes,
                    "train.warmup_steps": t.warmup_steps, "train.weight_decay": t.weight_decay,
                    "eval.limit": e.limit, "data.limit_train": d.limit_train,
                    "data.limit_test": d.limit_test, "data.workers": d.workers, "data.image_size": d.image_size,
                    **{f"loss.{f.name}": getattr(cfg.loss, f.name) for f in dataclasses.fields(cfg.loss)
                       if isinstance(getattr(cfg.loss, f.name), (int, float))}}
    for name, v in non_negative.items():
        if not (v >= 0 and math.isfinite(v)):
            raise ConfigError(f"{name} must be a finite number >= 0, got {v}")
    _validate_plan(t)
    if not t.grad_clip > 0 or not math.isfinite(t.grad_clip):
        raise ConfigError(f"train.grad_clip must be a finite number > 0 (the max gradient norm), got {t.grad_clip}")
    if t.threads < -1:
        raise ConfigError(f"train.threads must be 0 (auto: 1 thread), -1 (torch's default) or a count, got {t.threads}")
    if t.max_skipped_in_a_row < 0:
        raise ConfigError(f"train.max_skipped_in_a_row must be >= 0 (0 = never stop), got {t.max_skipped_in_a_row}")
    if not 0 <= t.max_skip_fraction <= 1:
        raise ConfigError(f"train.max_skip_fraction must be in [0, 1] (1 = never stop), got {t.max_skip_fraction}")
    if t.batch_size % t.grad_accum:
        raise ConfigError(f"train.batch_size={t.batch_size} (the global batch) must be divisible by train.grad_accum={t.grad_accum}")
    if not 0 <= t.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if d.channels not in (0, 1, 3):
        raise ConfigError(f"data.channels must be 0 (the model's), 1 or 3, got {d.channels}")
    if not 0 < d.test_fraction < 1:
        raise ConfigError(f"data.test_fraction must be in (0, 1), got {d.test_fraction}")


def _validate_plan(t: TrainConfig) -> None:
    """train.max_steps: 0 plans the step count from the time budget, timed over the warm-up's steps."""
    if t.max_steps > 0:
        return
    if not t.max_minutes > 0:
        raise ConfigError("train.max_steps=0 plans the run's step count from its time budget: give train.max_minutes "
                          "too (or a step count in train.max_steps)")
    if t.warmup_steps < MIN_PLANNING_STEPS:
        raise ConfigError(f"train.max_steps=0 plans the step count at the end of the warm-up from the speed of its "
                          f"steps: train.warmup_steps must be at least {MIN_PLANNING_STEPS}, got {t.warmup_steps}")
