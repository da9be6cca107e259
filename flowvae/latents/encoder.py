"""Compression encoder trunk: a conv ResNet from the image to feature maps, one per Glow level.

It works at the resolutions of the Glow levels (H/2, H/4, ...), so its feature maps line up with the
resolutions the Glow levels act at; ``features(x)`` returns them keyed by height (VDVAE style). Each
latent group owns the head that turns these features into its posterior (global_code.py, hierarchical.py).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
            nn.SiLU(), nn.Conv2d(width, width, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.net(x)


class Encoder(nn.Module):
    """Stem (stride 2) -> per Glow level: residual blocks at that level's resolution (H / 2^(l+1)),
    then a stride-2 conv to the next. Nothing runs at full resolution: no Glow level acts there, and it
    would dominate the cost."""

    def __init__(self, in_channels: int, image_size: tuple[int, int], width: int = 64, blocks: int = 1, levels: int = 2):
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 4, stride=2, padding=1)
        self.stages = nn.ModuleList()
        self.downs = nn.ModuleList()
        h, w = image_size[0] // 2, image_size[1] // 2
        self.resolutions = []
        for lvl in range(levels):
            self.stages.append(nn.Sequential(*[ResBlock(width) for _ in range(blocks)]))
            self.resolutions.append(h)
            if lvl < levels - 1:
                self.downs.append(nn.Conv2d(width, width, 4, stride=2, padding=1))
                h, w = h // 2, w // 2
        self.width = width
        self.coarsest = (h, w)

    def features(self, x: Tensor) -> dict[int, Tensor]:
        """Feature maps keyed by resolution (height), finest first; one per Glow level."""
        feats = {}
        h = self.stem(x)
        for lvl, stage in enumerate(self.stages):
            h = stage(h)
            feats[h.shape[2]] = h
            if lvl < len(self.downs):
                h = self.downs[lvl](h)
        return feats

    def forward(self, x: Tensor) -> dict[int, Tensor]:
        return self.features(x)
