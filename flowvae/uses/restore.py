"""Inpainting and denoising under the model's likelihood, behind ``flowvae inpaint`` / ``flowvae denoise``.

    flowvae inpaint --checkpoint runs/fm --mask bottom --n 8 --samples 3 --out inpaint.png
    flowvae inpaint --checkpoint runs/fm --images photo.png --mask my_mask.png --out filled.png
    flowvae denoise --checkpoint runs/fm --sigma 40 --n 8 --out denoise.png
    flowvae denoise --checkpoint runs/fm --salt-pepper 0.2 --n 8 --out denoise_sp.png

Method (both commands): optimise the unknown pixel values themselves, as continuous values in
pixel units, to maximise the model's deterministic ELBO of the whole image,

    J(p) = log p(y | z = mu(p)) - KL(q(z | p) || p(z)),   y = p / 2^b - 1/2,

(for a flow-only model just ``log p(y)``), with Adam and projection onto [0, 2^b). Why pixel space
and not the local code eps: the observed pixels are then never variables, so they stay bit-exact by
construction, and the objective is the exact likelihood of the model (the flow) plus the usual bound
for the code, recomputed from the current completion through the encoder, so z and the missing pixels
agree. Constraining eps so that the flow's inverse reproduces the observed pixels has no such closed
form. ``inpaint`` returns the most likely completion (the optimum from the mean-fill start) and,
with ``samples``, completions from random starts with annealed Gaussian noise on the iterates
(stochastic gradient Langevin-style exploration, noise decaying to 0): different plausible local
optima, not exact posterior samples.

``denoise`` with Gaussian noise of std ``sigma`` (pixel units, 0..255) maximises
``J(p) - |p - noisy|^2 / (2 sigma^2)``: the MAP estimate under the model as the image prior and the
Gaussian noise likelihood. Salt-and-pepper noise destroys the pixels it hits, so the pixels at 0 or
255 are treated as missing and inpainted, starting from a 3x3 median filter (this also re-fills true
black/white pixels, which the model then predicts back).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import check_count, check_dense, check_flag, check_number

BUILTIN_MASKS = ("bottom", "centre", "center", "random")


def builtin_mask(kind: str, shape: tuple[int, int, int], n: int = 1, fraction: float = 0.5,
                 generator: Optional[torch.Generator] = None) -> Tensor:
    """bool mask [n, C, H, W], True = missing: 'bottom' (bottom half), 'centre' (centre square of half
    the side), 'random' (each pixel missing with probability ``fraction``, all channels together)."""
    c, h, w = shape
    m = torch.zeros(n, c, h, w, dtype=torch.bool)
    if kind == "bottom":
        m[:, :, h // 2 :] = True
    elif kind in ("centre", "center"):
        a, b = h // 4, w // 4
        m[:, :, a : a + h // 2, b : b + w // 2] = True
    elif kind == "random":
        if not 0 < fraction < 1:
            raise ValueError(f"the random mask's fraction of missing pixels must be in (0, 1), got {fraction}")
        m[:] = (torch.rand(n, 1, h, w, generator=generator) < fraction).expand(n, c, h, w)
    else:
        raise ValueError(f"unknown mask {kind!r}: use one of {', '.join(BUILTIN_MASKS[:1] + BUILTIN_MASKS[2:])} or a file")
    return m


def load_mask(path: Union[str, Path], shape: tuple[int, int, int]) -> Tensor:
    """A mask from a file: an image (PNG etc.; nonzero = missing) or a torch file holding a bool tensor.
    Returns bool [1, C, H, W]; its size must be the model's (no resizing: a mask must be exact)."""
    from PIL import Image, UnidentifiedImageError

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"mask file not found: {p}")
    if p.suffix in (".pt", ".pth"):
        from ..runtime import load_torch_file

        m = load_torch_file(p, "mask file (a saved bool tensor)")  # safe load, clean errors, never unsafe advice
        if not isinstance(m, Tensor):
            raise ValueError(f"{p}: expected a saved bool tensor, got {type(m).__name__}")
    else:
        try:
            with Image.open(p) as im:
                m = torch.from_numpy(np.array(im.convert("L"))).gt(0)
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read mask image {p}: {e}") from None
    return check_mask(m, shape)


def check_mask(mask: Tensor, shape: tuple[int, int, int], n: Optional[int] = None) -> Tensor:
    """Validate a mask (bool, True = missing) of shape [H, W], [C, H, W], [1 or N, C, H, W] (or with 1
    channel for all channels) and return it as bool [1 or N, C, H, W]."""
    c, h, w = shape
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a bool torch.Tensor (True = missing), got {type(mask).__name__}")
    check_dense(mask, "mask")
    if mask.dtype != torch.bool:
        raise TypeError(f"mask must have dtype torch.bool (True = missing pixel), got {mask.dtype}; "
                        f"e.g. mask = (m > 0) for a 0/1 or 0/255 mask")
    want = f"[{h}, {w}], [{c}, {h}, {w}] or [N, {c}, {h}, {w}]"
    m = mask
    if m.dim() == 2:
        m = m[None, None]
    elif m.dim() == 3:
        m = m[None]
    if m.dim() != 4 or tuple(m.shape[2:]) != (h, w) or m.shape[1] not in (1, c):
        raise ValueError(f"mask has shape {list(mask.shape)}, but this model's images need {want}")
    if n is not None and m.shape[0] not in (1, n):
        raise ValueError(f"mask holds {m.shape[0]} masks for {n} images (give 1 or {n})")
    return m.expand(m.shape[0], c, h, w).contiguous()


def _objective(model, p: Tensor) -> Tensor:
    """Per-image deterministic ELBO (nats, up to a constant) of continuous pixel values ``p`` in [0, 2^b):
    the model's terms at the centre of the bin of ``p - 1/2``, i.e. y = p / 2^b - 1/2 (the encoder sees
    the centred values it sees for integer images), z the posterior mean, log q(u|x) = 0."""
    t = model.terms(p - 0.5, deterministic=True)
    return t["log_p_y"] - t["kl_total"]


def _optimise(model, x_int: Tensor, free: Tensor, init: Tensor, steps: int, lr: float,
              data_term=None, noise: float = 0.0, generator: Optional[torch.Generator] = None) -> Tensor:
    """Gradient ascent on the free pixels (``free`` True) from ``init`` (pixel units); fixed pixels stay
    x_int. Returns the integer image (float, 0..2^b-1)."""
    top = 2**model.n_bits
    fixed = x_int + 0.5
    v = init.clone().requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    # step size decays linearly to lr/10: large moves first (pixels may need to travel ~100 values), then settle
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - 0.9 * i / max(1, steps))
    was = model.training
    model.eval()
    req = [q.requires_grad for q in model.parameters()]
    for q in model.parameters():
        q.requires_grad_(False)
    try:
        with torch.enable_grad(), torch.autocast(model.device.type, enabled=False):
            for i in range(steps):
                p = torch.where(free, v, fixed)
                obj = _objective(model, p)
                if data_term is not None:
                    obj = obj + data_term(p)
                opt.zero_grad(set_to_none=True)
                (-obj.sum()).backward()
                opt.step()
                sched.step()
                with torch.no_grad():
                    if noise > 0:  # annealed exploration: linear decay to 0 over the first 80% of the steps
                        s = noise * max(0.0, 1 - i / (0.8 * steps))
                        v.add_(s * torch.randn(v.shape, generator=generator, device=v.device))
                    v.clamp_(0.0, top - 1e-3)
    finally:
        for q, r in zip(model.parameters(), req):
            q.requires_grad_(r)
        model.train(was)
    p = torch.where(free, v.detach(), fixed)
    return torch.floor(p).clamp(0, top - 1)


def inpaint(model, x: Tensor, mask: Tensor, samples: int = 0, steps: int = 200, lr: float = 5.0,
            noise: float = 20.0, seed: int = 0, fill: Optional[Tensor] = None) -> dict[str, Tensor]:
    """Fill the pixels where ``mask`` is True (bool, see check_mask) in uint8 images ``x`` [N, C, H, W].

    Returns 'map' (uint8 [N, C, H, W]: the completion from the mean-fill start, no noise) and, with
    ``samples`` > 0, 'samples' (uint8 [samples, N, C, H, W]: random starts, annealed noise of std
    ``noise`` pixel values). Pixels where the mask is False are bit-exact copies of ``x`` in every output.
    ``fill`` (uint8 or float [C, H, W] or [N, C, H, W], pixel values 0..255) is the start of the MAP run:
    default the mean of the observed pixels of each image. ``lr`` is Adam's step in pixel values (decaying
    linearly to a tenth)."""
    x_int = model._prepare(x)
    n = x_int.shape[0]
    m = check_mask(mask, model.image_shape, n).to(x_int.device).expand_as(x_int)
    samples, steps, seed = check_count(samples, "samples", 0), check_count(steps, "steps", 0), check_count(seed, "seed", None)
    lr = check_number(lr, "lr", strict=True, hint=" (Adam's step in pixel values)")
    noise = check_number(noise, "noise", hint=" (pixel values)")
    top = 2**model.n_bits
    if fill is None:
        obs = (~m).float()
        mean = (x_int * obs).flatten(1).sum(1) / obs.flatten(1).sum(1).clamp_min(1)
        init = (mean.view(n, 1, 1, 1) + 0.5).expand_as(x_int)
    else:
        init = torch.as_tensor(fill, dtype=torch.float32, device=x_int.device) / 2 ** (8 - model.n_bits)
        init = (init + 0.5).expand_as(x_int)
    g = torch.Generator(device=x_int.device).manual_seed(seed)
    out = {"map": _finish(model, x, _optimise(model, x_int, m, init, steps, lr), m)}
    if samples:
        draws = []
        for _ in range(samples):
            start = torch.rand(x_int.shape, generator=g, device=x_int.device) * top
            draws.append(_finish(model, x, _optimise(model, x_int, m, start, steps, lr, noise=noise * top / 256,
                                                     generator=g), m))
        out["samples"] = torch.stack(draws)
    return out


def _finish(model, x: Tensor, p_int: Tensor, m: Tensor) -> Tensor:
    """uint8 result: model pixels where m, the input's own uint8 values elsewhere (exact even at n_bits < 8)."""
    return torch.where(m, model._to_uint8(p_int), x.to(p_int.device))


def denoise(model, x_noisy: Tensor, sigma: Optional[float] = None, salt_pepper: bool = False, steps: int = 200,
            lr: float = 5.0) -> Tensor:
    """A clean estimate of uint8 ``x_noisy``: Gaussian noise of std ``sigma`` (pixel values 0..255) by MAP
    under the model, or ``salt_pepper`` noise by inpainting the pixels at 0 or 255 (module docstring)."""
    model._prepare(x_noisy, "x_noisy")
    salt_pepper = check_flag(salt_pepper, "salt_pepper")
    if salt_pepper == (sigma is not None):
        raise ValueError("give exactly one of sigma (Gaussian noise) or salt_pepper=True")
    steps = check_count(steps, "steps", 0)
    lr = check_number(lr, "lr", strict=True, hint=" (Adam's step in pixel values)")
    if salt_pepper:
        m = (x_noisy == 0) | (x_noisy == 255)
        start = median_filter(x_noisy.cpu()).float()  # a good start: most true black pixels stay black
        return inpaint(model, x_noisy, m, steps=steps, lr=lr, fill=start)["map"]
    sigma = check_number(sigma, "sigma", strict=True, hint=" (the noise std in pixel values 0..255)")
    x_int = model._prepare(x_noisy)
    s = sigma / 2 ** (8 - model.n_bits)
    noisy = x_int + 0.5

    def gaussian(p: Tensor) -> Tensor:
        return -(p - noisy).pow(2).flatten(1).sum(1) / (2 * s * s)

    free = torch.ones_like(x_int, dtype=torch.bool)
    return model._to_uint8(_optimise(model, x_int, free, noisy.clone(), steps, lr, data_term=gaussian))


# ------------------------------------------------------------------ corruption and baselines
def add_gaussian_noise(x: Tensor, sigma: float, generator: Optional[torch.Generator] = None) -> Tensor:
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"sigma must be a finite number >= 0 (pixel values 0..255), got {sigma}")
    noise = torch.randn(x.shape, generator=generator) * sigma
    return (x.float() + noise.to(x.device)).round().clamp(0, 255).to(torch.uint8)


def add_salt_pepper(x: Tensor, amount: float, generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Returns (noisy uint8, bool mask of the hit pixels): each pixel is hit with probability ``amount``
    and then set to 0 or 255 with equal odds."""
    if not 0 <= amount <= 1:
        raise ValueError(f"the salt-and-pepper amount must be in [0, 1], got {amount}")
    hit = torch.rand(x.shape, generator=generator) < amount
    salt = torch.rand(x.shape, generator=generator) < 0.5
    val = torch.where(salt, torch.tensor(255, dtype=torch.uint8), torch.tensor(0, dtype=torch.uint8))
    hit, val = hit.to(x.device), val.to(x.device)
    return torch.where(hit, val, x), hit


def median_filter(x: Tensor, size: int = 3) -> Tensor:
    """size x size median filter of uint8 images (reflect padding)."""
    pad = size // 2
    xp = F.pad(x.float(), (pad, pad, pad, pad), mode="reflect")
    patches = F.unfold(xp, size).view(x.shape[0], x.shape[1], size * size, -1)
    return patches.median(2).values.view_as(x).round().to(torch.uint8)


def mean_fill(x: Tensor, mask: Tensor, mean_image: Tensor) -> Tensor:
    """The baseline: masked pixels from ``mean_image`` (uint8-valued [C, H, W], e.g. the training mean)."""
    return torch.where(mask, mean_image.round().clamp(0, 255).to(torch.uint8).expand_as(x), x)


def psnr(a: Tensor, b: Tensor, where: Optional[Tensor] = None) -> float:
    """PSNR in dB (peak 255) between uint8 batches over the pixels ``where`` (all if None), pooled MSE."""
    d = (a.double() - b.double()).pow(2)
    mse = d[where].mean() if where is not None else d.mean()
    return float("inf") if mse == 0 else float(10 * torch.log10(255.0**2 / mse))
