"""Image grids: uint8 batches to PNG files and TensorBoard images."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import torch
from torch import Tensor
from torchvision.utils import make_grid, save_image


def grid(images: Tensor, nrow: int, pad: int = 2) -> Tensor:
    """uint8 [N, C, H, W] -> float [3, H', W'] in [0, 1] (grey images shown as grey)."""
    return make_grid(images.float().div(255.0), nrow=nrow, padding=pad, pad_value=1.0)


def save_grid(images: Tensor, path: Union[str, Path], nrow: int, pad: int = 2) -> Path:
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.float().div(255.0), path, nrow=nrow, padding=pad, pad_value=1.0)
    return path


def blank_like(images: Tensor, n: int = 1) -> Tensor:
    """White placeholder tiles (the corner of a swap grid)."""
    return torch.full((n, *images.shape[1:]), 255, dtype=torch.uint8, device=images.device)
