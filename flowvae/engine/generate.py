"""What the models make: samples, swap grids, reconstructions with resampled z, interpolations.

Each function returns ``(images uint8 [N, C, H, W], nrow)`` ready for visualize.save_grid.
"""
from __future__ import annotations

import torch
from torch import Tensor

from ..model import FlowVAE
from ..visualize import blank_like


@torch.no_grad()
def sample_images(model: FlowVAE, n: int, temperature: float = 0.7, z_temperature: float = 1.0, batch: int = 64,
                  progress: bool = True) -> Tensor:
    """n samples, ``batch`` at a time (the images of the seed are the ones this command always drew), with a
    progress bar past 8 batches; a number that cannot fit in memory is refused up front (FlowVAE.sample)."""
    return model.sample(n, temperature, z_temperature, batch=batch, progress=None if progress else False)


@torch.no_grad()
def swap_grid(model: FlowVAE, x: Tensor) -> tuple[Tensor, int]:
    """(n+1) x (n+1) grid. Row i keeps image i's local code, column j takes image j's global code;
    the top row shows the global-code donors and the left column the local-code donors."""
    if not model.hybrid:
        raise ValueError("swap exchanges global codes: this flow-only (model.type=glow) model has none")
    x = x.to(model.device)
    n = x.shape[0]
    z, eps = model.encode(x)
    rows = [torch.cat([blank_like(x), x])]
    for i in range(n):
        cell = model.decode(z, eps[i : i + 1].expand(n, -1, -1, -1))
        rows.append(torch.cat([x[i : i + 1], cell]))
    return torch.cat(rows), n + 1


@torch.no_grad()
def reconstruct_grid(model: FlowVAE, x: Tensor, m: int = 7, z_temperature: float = 1.0) -> tuple[Tensor, int]:
    """Per row: the original, its reconstruction decode(encode(x)), then m decodes that keep eps and draw
    the whole VAE code from the prior: what changes is what the code controls."""
    if not model.hybrid:
        raise ValueError("reconstruct resamples the global code: this flow-only model has none")
    z, eps = model.encode(x)
    rows = []
    for i in range(x.shape[0]):
        e = eps[i : i + 1].expand(m, -1, -1, -1)
        resampled = model.decode(model.sample_code(m, z_temperature), e)
        rows.append(torch.cat([x[i : i + 1].to(model.device), model.decode(z[i : i + 1], eps[i : i + 1]), resampled]))
    return torch.cat(rows), m + 2


@torch.no_grad()
def resample_level_grid(model: FlowVAE, x: Tensor, level, m: int = 7, temperature: float = 1.0,
                        seed: int = 0) -> tuple[Tensor, int]:
    """Per row: the original, then m images that re-draw one latent group (``level``: 'global' or an
    index l of the hierarchical z_l) and hold the other groups and eps: what that group controls.
    Column j uses the same draw for every row (a seeded generator)."""
    x = x.to(model.device)
    n = x.shape[0]
    shape = model.group_shape(level)[1:]
    gen = torch.Generator(device=model.device).manual_seed(seed)
    code, eps = model.encode(x)  # once: each column only re-draws one group and decodes
    cols = []
    for _ in range(m):
        draw = torch.randn(shape, generator=gen, device=model.device).expand(n, *shape)
        cols.append(model.decode(model.resample_code(code, level, temperature, noise=draw), eps))
    grid_rows = [torch.cat([x[i : i + 1]] + [c[i : i + 1] for c in cols]) for i in range(n)]
    return torch.cat(grid_rows), m + 1


@torch.no_grad()
def interpolate_grid(model: FlowVAE, xa: Tensor, xb: Tensor, steps: int = 8) -> tuple[Tensor, int]:
    """For each pair (a, b), rows: z from a to b with a's eps; eps from a to b with a's z; both together.
    A flow-only model gets the eps row only."""
    za, ea = model.encode(xa)
    zb, eb = model.encode(xb)
    t = torch.linspace(0, 1, steps, device=model.device)
    rows = []
    for i in range(xa.shape[0]):
        e_path = torch.lerp(ea[i : i + 1], eb[i : i + 1], t.view(-1, 1, 1, 1))
        if model.hybrid:
            z_path = torch.lerp(za[i : i + 1], zb[i : i + 1], t.view(-1, 1))
            rows.append(model.decode(z_path, ea[i : i + 1].expand(steps, -1, -1, -1)))
            rows.append(model.decode(za[i : i + 1].expand(steps, -1), e_path))
            rows.append(model.decode(z_path, e_path))
        else:
            rows.append(model.decode(None, e_path))
    return torch.cat(rows), steps
