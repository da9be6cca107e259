"""Image grids: uint8 batches to PNG files and TensorBoard images, with a caption band that says
which row and column is which."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.utils import make_grid


def _upscale(images: Tensor, scale: Optional[int]) -> Tensor:
    """Nearest-neighbour enlargement so small images (28x28) are legible: by default to >= 56 px."""
    if scale is None:
        scale = max(1, 56 // images.shape[-2])
    x = images.float().div(255.0)
    return F.interpolate(x, scale_factor=scale, mode="nearest") if scale > 1 else x


def grid(images: Tensor, nrow: int, pad: int = 2, scale: Optional[int] = 1) -> Tensor:
    """uint8 [N, C, H, W] -> float [3, H', W'] in [0, 1] (grey images shown as grey)."""
    return make_grid(_upscale(images, scale), nrow=nrow, padding=pad, pad_value=1.0)


def save_grid(images: Tensor, path: Union[str, Path], nrow: int, pad: int = 2, scale: Optional[int] = None,
              caption: Optional[Sequence[str]] = None) -> Path:
    """Write a PNG grid; tiles are enlarged by ``scale`` (default: to at least 56 px, nearest neighbour).
    ``caption`` lines are written in a white band above the grid (wrapped to its width)."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ValueError(f"output must be a .png file, got {path}")
    path.parent.mkdir(parents=True, exist_ok=True)
    g = make_grid(_upscale(images, scale), nrow=nrow, padding=pad, pad_value=1.0)
    img = _to_pil(g)
    if caption:
        img = add_caption(img, caption)
    img.save(path)
    return path


def _to_pil(g: Tensor):
    from PIL import Image

    arr = g.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(arr)


def _font(size: int = 12):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except TypeError:
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        trial = f"{line} {word}".strip()
        if line and draw.textlength(trial, font=font) > width:
            lines.append(line)
            line = word
        else:
            line = trial
    return lines + ([line] if line else [])


def add_caption(img, caption: Sequence[str], margin: int = 4):
    """The image with a white band on top holding ``caption`` (one paragraph per item, wrapped)."""
    from PIL import Image, ImageDraw

    font = _font()
    probe = ImageDraw.Draw(img)
    width = max(img.width - 2 * margin, 40)
    lines = [ln for para in caption for ln in _wrap(probe, para, font, width)]
    line_h = int(font.getbbox("Hg")[3]) + 3
    band = margin * 2 + line_h * len(lines)
    out = Image.new("RGB", (img.width, img.height + band), "white")
    out.paste(img.convert("RGB"), (0, band))
    draw = ImageDraw.Draw(out)
    for i, ln in enumerate(lines):
        draw.text((margin, margin + i * line_h), ln, fill=(0, 0, 0), font=font)
    return out


def blank_like(images: Tensor, n: int = 1) -> Tensor:
    """White placeholder tiles (the corner of a swap grid)."""
    return torch.full((n, *images.shape[1:]), 255, dtype=torch.uint8, device=images.device)
