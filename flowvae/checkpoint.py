"""Checkpoints: one file holding model, EMA, optimiser, scheduler, step, config and RNG state.

Written atomically (temp file + rename) so an interrupted save never leaves a
broken checkpoint, and loaded with ``weights_only=True`` (no arbitrary code).
DDP/compile prefixes ('module.', '_orig_mod.') are stripped on save and load.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Union

import torch

from .config import Config, config_from_dict

_PREFIXES = ("module.", "_orig_mod.")


class CheckpointError(RuntimeError):
    pass


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


def save_checkpoint(path: Union[str, Path], state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = dict(state)
    for key in ("model", "ema"):
        if key in state and state[key] is not None:
            state[key] = clean_state_dict(state[key])
    tmp = path.with_name(path.name + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def read_checkpoint(path: Union[str, Path]) -> dict:
    from .pretrained import resolve

    path = resolve(path)  # "pretrained:NAME" -> the file shipped in the package
    if path.is_dir():
        path = path / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path} (pass the file, or the run directory holding checkpoint.pt)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign files raise many different errors
        raise CheckpointError(f"{path} is not a readable flowvae checkpoint ({type(e).__name__}: {e}). "
                              f"It may be truncated or from another program; use an earlier checkpoint or retrain.") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise CheckpointError(f"{path} is not a flowvae checkpoint (it lacks 'model' or 'config')")
    return state


def load_checkpoint(path: Union[str, Path], ema: bool = True, device: Union[str, torch.device] = "cpu") -> tuple[Any, Config, dict]:
    """Load ``(model, config, state)``. The model carries the EMA weights when the checkpoint has
    them and ``ema`` is True (what evaluation and sampling use), and is in eval mode.
    ``path`` may be ``"pretrained:fashion_mnist"``: a model shipped in the package."""
    from .model import FlowVAE

    state = read_checkpoint(path)
    cfg = config_from_dict(state["config"])
    model = FlowVAE.from_config(cfg.model)
    weights = state.get("ema") if ema and state.get("ema") is not None else state["model"]
    try:
        model.load_state_dict(clean_state_dict(weights))
    except RuntimeError as e:
        raise CheckpointError(f"{path}: weights do not match the model its config describes: {e}") from None
    return model.to(device).eval(), cfg, state
