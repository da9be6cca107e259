"""ActNorm: per-channel affine normalisation with data-dependent initialisation.

Initialisation is explicit: :func:`data_dependent_init` runs one forward pass
during which every ActNorm sets its bias and scale so that its output has zero
mean and unit variance per channel. An ordinary forward call never changes the
parameters (no first-batch side effect), and the ``initialized`` buffer travels
in checkpoints so a loaded model is never re-initialised.
"""
from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch
from torch import Tensor, nn

from .base import Cond, FlowLayer, logdet_dtype


class ActNorm(FlowLayer):
    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.log_scale = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.register_buffer("initialized", torch.tensor(False))
        self.eps = eps
        self._init_pending = False

    @torch.no_grad()
    def _init_from(self, x: Tensor) -> None:
        xf = x.detach().to(torch.float32).transpose(0, 1).flatten(1)
        mean = xf.mean(1)
        std = xf.std(1, unbiased=False)
        self.bias.copy_((-mean).view_as(self.bias))
        self.log_scale.copy_((-torch.log(std + self.eps)).view_as(self.log_scale))
        self.initialized.fill_(True)
        self._init_pending = False

    def _logdet(self, x: Tensor) -> Tensor:
        hw = x.shape[2] * x.shape[3]
        ld = self.log_scale.to(logdet_dtype(x)).sum() * hw
        return ld.expand(x.shape[0])

    def forward(self, x: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        if self._init_pending:
            self._init_from(x)
        y = (x + self.bias) * torch.exp(self.log_scale)
        return y, self._logdet(x)

    def inverse(self, y: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        x = y * torch.exp(-self.log_scale) - self.bias
        return x, -self._logdet(y)


@contextlib.contextmanager
def data_dependent_init(module: nn.Module) -> Iterator[None]:
    """Within this context, the next forward pass through each ActNorm initialises it."""
    layers = [m for m in module.modules() if isinstance(m, ActNorm)]
    for m in layers:
        m._init_pending = True
    try:
        yield
    except BaseException:
        for m in layers:
            m._init_pending = False
        raise
    missed = [m for m in layers if m._init_pending]
    for m in layers:
        m._init_pending = False
    if missed:
            raise RuntimeError(f"{len(missed)} ActNorm layers were not reached by the initialisation pass")
