"""Image grids: uint8 batches to PNG files and TensorBoard images."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid, save_image


def _upscale(images: Tensor, scale: Optional[int]) -> Tensor:
    """Nearest-neighbour enlargement so small images (28x28) are legible: by default to >= 56 px."""
    if scale is None:
        scale = max(1, 56 // images.shape[-2])
    x = images.float().div(255.0)
    return F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x


def grid(images: Tensor, nrow: int, pad: int = 2, scale: Optional[int] = 1) -> Tensor:
    """uint8 [N, C, H, W] -> float [3, H', W'] in [0, 1] (grey images shown as grey)."""
    return make_grid(_upscale(images, scale), nrow=nrow, padding=pad, pad_value=1.0)


def save_grid(images: Tensor, path: Union[str, Path], nrow: int, pad: int = 2, scale: Optional[int] = None) -> Path:
    """Write a PNG grid; tiles are enlarged by ``scale`` (default: to at least 56 px, nearest neighbour)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(_upscale(images, scale), path, nrow=nrow, padding=pad, pad_value=1.0)
    return path


def blank_like(images: Tensor, n: int = 1) -> Tensor:
    """White placeholder tiles (the corner of a swap grid)."""
    return torch.full((n, *images.shape[1:]), 255, dtype=torch.uint8, device=images.device)
