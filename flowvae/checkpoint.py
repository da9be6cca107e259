"""Checkpoints: one file holding model, EMA, optimiser, step, planned step count, config and RNG state.

Written atomically (temp file + rename) so an interrupted save never leaves a
broken checkpoint, and loaded with ``weights_only=True`` (no arbitrary code).
DDP/compile prefixes ('module.', '_orig_mod.') are stripped on save and load.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Union

import torch

from .config import Config, ConfigError, config_from_dict
from .errors import FileFormatError, FlowVAEError
from .runtime import _why_unreadable, describe_file, load_torch_file  # noqa: F401  (re-exported)

_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(FlowVAEError, RuntimeError):
    """A checkpoint that cannot be found, read, written or matched to its model."""


class CheckpointNotFound(CheckpointError, FileNotFoundError):
    """No checkpoint at the given path (or no shipped model of that name)."""


def clean_state_dict(sd: dict) -> dict:
    out = {}
    for k, v in sd.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def _old_layout(sd: dict) -> bool:
    return any(k.startswith(("encoder.", "prior.", "latents.heads.", "latents.td_")) for k in sd)


def _upgrade_key(k: str, levels: int) -> str:
    m = re.match(r"latents\.(heads|td_nets)\.(\d+)\.(.*)", k)
    if m:
        return f"latents.groups.level{m[2]}.{'head' if m[1] == 'heads' else 'prior_net'}.{m[3]}"
    for old, new in (("encoder.head.", "latents.groups.global.head."), ("encoder.", "latents.encoder."),
                     ("prior.", "latents.groups.global.prior."),
                     ("latents.td_top.", f"latents.groups.level{levels - 1}.prior_net.")):
        if k.startswith(old):
            return new + k[len(old):]
    return k


def upgrade_state_dict(sd: dict, model_cfg) -> dict:
    """Weights written before the latents interface (``encoder.*``, ``prior.*``, ``latents.heads.*``:
    one flat code sliced by offsets) under today's names (``latents.encoder.*``,
    ``latents.groups.{global,level<l>}.*``: one module per latent group). Today's weights pass as they are."""
    sd = clean_state_dict(sd)
    if not _old_layout(sd):
        return sd
    return {_upgrade_key(k, model_cfg.levels): v for k, v in sd.items()}


def upgrade_optimizer_state(opt_sd: dict, saved_model_sd: dict, model: torch.nn.Module) -> dict:
    """An optimiser state saved with an older parameter order, renumbered to ``model``'s order (optimiser
    state is keyed by parameter position, and the latent groups' parameters now sit in other places)."""
    saved_model_sd = clean_state_dict(saved_model_sd)
    if not _old_layout(saved_model_sd):
        return opt_sd
    names = [n for n, _ in model.named_parameters()]
    position = {n: i for i, n in enumerate(names)}
    old = [_upgrade_key(k, model.cfg.levels) for k in saved_model_sd]
    old = [k for k in old if k in position]  # the saved order, parameters only (buffers are skipped)
    if len(old) != len(names) or len(opt_sd["param_groups"]) != 1:
        raise CheckpointError("this checkpoint's optimiser state is from an older flowvae and cannot be matched "
                              "to the model's parameters; evaluate or sample from it, or start a new run from its "
                              "weights")
    out = dict(opt_sd)
    out["state"] = {position[old[int(i)]]: s for i, s in opt_sd["state"].items()}
    return out


def save_checkpoint(path: Union[str, Path], state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    for key in ("model", "ema"):
        if key in state and state[key] is not None:
            state[key] = clean_state_dict(state[key])
    if path.is_dir():
        raise CheckpointError(f"cannot write checkpoint {path}: it is a directory; move it away or choose another --out")
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except Exception as e:  # disk full, quota, permissions: keep the previous checkpoint and leave no .tmp behind
        from .runtime import describe_write_error

        try:
            tmp.unlink()
        except OSError:
            pass
        advice = (" the previous checkpoint there is unchanged; free some space (or fix the folder) and continue with "
                  "--resume" if path.is_file() else " free some space (or fix the folder)")
        raise CheckpointError(f"cannot write checkpoint {path}: {describe_write_error(path, e)};{advice}") from None


def checkpoint_file(path: Union[str, Path]) -> Path:
    """The checkpoint file for a file or run-directory path (or ``pretrained:NAME``, a model shipped in the
    package), with a clear error when there is none."""
    from .pretrained import resolve

    try:
        path = resolve(path)
    except FileNotFoundError as e:  # an unknown or retired pretrained:NAME
        raise CheckpointNotFound(str(e)) from None
    if path.is_dir():
        inner = path / "checkpoint.pt"
        if path.name.endswith(".pt") or inner.is_dir():
            bad = inner if inner.is_dir() else path
            raise CheckpointError(f"{bad} is a directory, not a checkpoint file")
        if not inner.exists():
            raise CheckpointNotFound(f"no checkpoint in {path}: a run directory holds checkpoint.pt after its first "
                                    f"checkpoint (pass the run directory or the .pt file)")
        path = inner
    if not path.is_file():
        raise CheckpointNotFound(f"checkpoint not found: {path} (pass the file, or the run directory holding checkpoint.pt)")
    return path


def read_checkpoint(path: Union[str, Path]) -> dict:
    path = checkpoint_file(path)
    kind = describe_file(path)
    if kind is not None and "image" in kind:
        raise CheckpointError(f"{path} is not a readable flowvae checkpoint: it is {kind}. Pass a run directory "
                              f"or the checkpoint.pt in it (or pretrained:NAME; flowvae pretrained lists them).")
    try:
        state = load_torch_file(path, "flowvae checkpoint")
    except FileFormatError as e:
        raise CheckpointError(f"{e}. It may be truncated or from another program; use an earlier checkpoint "
                              f"or retrain.") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a flowvae checkpoint (it lacks 'model' or 'config')")
    return state


def checkpoint_config(state: dict, path: Union[str, Path]) -> Config:
    """The config stored in a checkpoint; an invalid one is reported as the checkpoint's, not the user's."""
    try:
        return config_from_dict(state["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: the config stored in this checkpoint is not valid for this version of "
                              f"flowvae: {e}") from None


def _mismatch(model: torch.nn.Module, weights: dict) -> str:
    """A one-line summary of how saved weights differ from a model (instead of torch's per-tensor dump)."""
    own = model.state_dict()
    shapes = [k for k in weights if k in own and tuple(weights[k].shape) != tuple(own[k].shape)]
    missing = [k for k in own if k not in weights]
    extra = [k for k in weights if k not in own]
    parts = []
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} tensor(s) of another shape (e.g. {k}: {list(weights[k].shape)} saved, "
                     f"{list(own[k].shape)} in the model)")
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if extra:
        parts.append(f"{len(extra)} unexpected (e.g. {extra[0]})")
    return "; ".join(parts) or "the weights do not fit"


def load_checkpoint(path: Union[str, Path], ema: bool = True, device: Union[str, torch.device] = "cpu") -> tuple[Any, Config, dict]:
    """Load ``(model, config, state)``. The model carries the EMA weights when the checkpoint has
    them and ``ema`` is True (what evaluation and sampling use), and is in eval mode.
    ``path`` may be ``"pretrained:fashion_mnist"``: a model shipped in the package."""
    from .model import FlowVAE
    from .runtime import resolve_device

    device = resolve_device(device)  # before reading: a bad device fails fast and clearly
    state = read_checkpoint(path)
    cfg = checkpoint_config(state, path)
    model = FlowVAE.from_config(cfg)
    weights = state.get("ema") if ema and state.get("ema") is not None else state["model"]
    weights = upgrade_state_dict(weights, cfg.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise CheckpointError(f"{path}: its weights do not match the model its config describes "
                              f"({_mismatch(model, weights)}); was the checkpoint edited, or written by "
                              f"another version of flowvae?") from None
    return model.to(device).eval(), cfg, state
