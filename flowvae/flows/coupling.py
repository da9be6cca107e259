"""Conditional affine coupling (Glow/RealNVP) with the global code in its network.

The first half of the channels, ``xa``, passes unchanged and (with the
conditioning) predicts a shift and a log-scale for the second half ``xb``:
``yb = (xb + shift) * exp(log_s)``. The log-scale is soft-clamped,
``log_s = c * tanh(raw / c)``, so a zero-initialised last layer makes the
coupling the identity and no step can blow up by more than ``exp(c)``. With ``shift_clamp`` > 0
(``model.shift_clamp``) the shift is soft-bounded the same way, ``shift = b * tanh(raw_shift / b)``:
then ``|yb| <= (|xb| + b) * exp(c)`` whatever the network computes, and a shift the network pushes
far past ``b`` (an input unlike the training images) is flat in its input, so it cannot pass a
small change of the input on, amplified, to the next step. 0 (the default, and every model trained
before the key existed) leaves the shift unbounded.

``scale="sigmoid"`` (``model.coupling_scale``) replaces the symmetric log-scale by Glow's sigmoid scale
(Kingma & Dhariwal, "Glow: Generative Flow with Invertible 1x1 Convolutions", 2018, in their released code),
``log_s = logsigmoid(raw + 2)``, kept above ``-c`` by the same soft clamp: the scale is in
``(e^-c, 1)``, so a coupling never expands its input. With a shift bound ``b`` it then obeys
``|yb| <= |xb| + b`` whatever its network computes: activations can grow by at most ``b`` per coupling,
not by a factor ``e^c``, and no input can set off a growth that feeds on itself from step to step.
The expansion a density needs comes from the ActNorm and 1x1 layers, whose weights are the same for
every input.

Under autocast (``train.precision`` bf16/fp16) only the network runs in reduced precision: its
output is cast to float32 (float64 for float64 inputs) before the affine map, so ``yb`` and the
log-determinant are computed, and summed, in float32.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Cond, FlowLayer, ZeroConv2d, logdet_dtype, sum_per_sample

COUPLING_IMPLS = ("auto", "gemm", "conv")
COUPLING_SCALES = ("tanh", "sigmoid")  # log_s = c tanh(raw / c) | c tanh(logsigmoid(raw + 2) / c), in (-c, 0)


def _relu_grad_(grad: Tensor, out: Tensor) -> Tensor:
    """``grad`` masked where the ReLU output ``out`` is zero, in place. ATen's threshold_backward op does it
    in one pass (1.0 ms on a 12544 x 128 tensor, one CPU thread); the public fallback, a multiply by
    sign(out) (0 or 1 after a ReLU), takes 2.3 ms and an extra tensor (torch 2.x, this machine)."""
    if _THRESHOLD_BACKWARD is not None:
        return _THRESHOLD_BACKWARD(grad, out, 0, grad_input=grad)
    return grad.mul_(torch.sign(out))


def _find_threshold_backward():
    try:
        return torch.ops.aten.threshold_backward.grad_input
    except (AttributeError, RuntimeError):  # an ATen build without the op: use the public fallback
        return None


_THRESHOLD_BACKWARD = _find_threshold_backward()


class _HiddenLayers(torch.autograd.Function):
    """``taps = relu(relu(cols @ W1^T + b1) @ W2^T + b2) @ W3^T`` on rows of pixels, with a hand-written
    backward. ``b1`` is ``[hidden]``, per image ``[N, hidden]`` (the projected global code) or per pixel
    ``[N, HW, hidden]`` (plus the projected spatial map decoded from z).

    Autograd would compute the same gradients; this saves memory passes over the two widest tensors of
    the Glow (pixels x hidden, per coupling):

    * the ReLU gradients are masked in place in the gradient the matmul just produced;
    * the shared biases ride in the GEMMs as a column of ones appended to their inputs (``cols`` and
      ``h1``), so no bias is broadcast-copied into an output (what ``addmm`` does on CPU) and the bias
      gradients fall out of the weight gradients' last column instead of a separate sum.

    All products run in ``dtype`` (the autocast dtype, or the input's); gradients are returned in the
    dtypes the inputs came in (float32 weights get float32 gradients).
    """

    @staticmethod
    def forward(ctx, cols, w1, b1, w2, b2, w3, dtype):
        n, hw, k = cols.shape
        hidden = w1.shape[0]
        shared = b1.dim() == 1  # one bias for all pixels: it goes in the GEMM
        with torch.autocast(cols.device.type, enabled=False):
            c = cols.new_empty(n * hw, k + shared, dtype=dtype)
            c[:, :k].view(n, hw, k).copy_(cols)
            h1a = cols.new_empty(n * hw, hidden + 1, dtype=dtype)  # h1 and a column of ones (b2's input)
            h1a[:, hidden] = 1
            h1 = h1a[:, :hidden]
            w1c = w1.to(dtype)
            if shared:
                c[:, k] = 1
                torch.mm(c, torch.cat([w1c, b1.to(dtype)[:, None]], 1).t(), out=h1)
            else:  # a bias per image [N, hidden] or per pixel [N, HW, hidden]
                torch.mm(c, w1c.t(), out=h1)
                h1.view(n, hw, hidden).add_(b1.to(dtype) if b1.dim() == 3 else b1.to(dtype)[:, None, :])
            h1.relu_()
            w2c = w2.to(dtype)
            h2 = torch.mm(h1a, torch.cat([w2c, b2.to(dtype)[:, None]], 1).t()).relu_()
            w3c = w3.to(dtype)
            taps = torch.mm(h2, w3c.t())
        ctx.save_for_backward(c, h1a, h2, w1c, w2c, w3c)
        ctx.meta = (n, hw, k, b1.dim(), cols.dtype, w1.dtype, b1.dtype, w2.dtype, b2.dtype, w3.dtype)
        return taps.view(n, hw, -1)

    @staticmethod
    def backward(ctx, g):
        c, h1a, h2, w1c, w2c, w3c = ctx.saved_tensors
        n, hw, k, b1_dim, t_cols, t_w1, t_b1, t_w2, t_b2, t_w3 = ctx.meta
        hidden = w1c.shape[0]
        need = ctx.needs_input_grad
        with torch.autocast(c.device.type, enabled=False):
            g = g.reshape(n * hw, -1).to(w3c.dtype)
            dw3 = torch.mm(g.t(), h2) if need[5] else None
            dh = torch.mm(g, w3c)
            _relu_grad_(dh, h2)  # ReLU, in place
            dw2 = db2 = None
            if need[3] or need[4]:
                dw2b = torch.mm(dh.t(), h1a)  # [hidden, hidden + 1]: the last column is db2
                dw2, db2 = dw2b[:, :hidden], dw2b[:, hidden]
            dh = torch.mm(dh, w2c)
            _relu_grad_(dh, h1a[:, :hidden])
            dw1 = db1 = None
            if b1_dim == 1:
                if need[1] or need[2]:
                    dw1b = torch.mm(dh.t(), c)  # the last column is db1
                    dw1, db1 = dw1b[:, :k], dw1b[:, k]
            else:
                if need[2]:
                    db1 = dh.view(n, hw, -1) if b1_dim == 3 else dh.view(n, hw, -1).sum(1)
                dw1 = torch.mm(dh.t(), c) if need[1] else None
            dcols = torch.mm(dh, w1c).view(n, hw, -1) if need[0] else None
        cast = lambda t, dt: None if t is None else t.to(dt)
        return (cast(dcols, t_cols), cast(dw1, t_w1), cast(db1, t_b1), cast(dw2, t_w2), cast(db2, t_b2),
                cast(dw3, t_w3), None)


class CouplingNet(nn.Module):
    """conv kxk -> ReLU -> conv1x1 -> ReLU -> zero-init conv kxk (k = ``kernel``, 3 by default).

    A global code enters as a per-channel bias after the first convolution
    (a linear projection of z, as in Wolf); a spatial code is concatenated to
    the input; a spatial map decoded from z (``cond.zmap``) enters as a per-pixel bias
    after the first convolution (a 1x1 projection: z's spatial layout at a ninth of the cost of
    concatenating it to a 3x3 input).

    ``kernel=1`` limits what the coupling sees to its own pixel (a squeezed 2^l x 2^l block): with
    it the flow cannot model the image's global layout by itself, which then has to come from z
    (the Variational Lossy Autoencoder argument, Chen et al. 2017).

    Two implementations share the same ``nn.Conv2d`` weights (``impl``, ``model.coupling_impl``):
    ``conv`` calls the convolutions; ``gemm`` (the CPU default) computes the three convolutions as
    matrix products on a pixels-by-channels layout: the first 3x3 convolution as ``unfold`` (im2col of the few input channels) then a matmul, the 1x1 as
    a matmul, and the last 3x3 (hidden -> few channels) as a matmul to ``9 x out`` per-tap outputs
    summed back onto the image by ``fold`` (col2im: the convolution written as a transposed
    convolution with the flipped kernel). Same maths and zero padding as ``F.conv2d``. Why: on CPU,
    mkldnn's convolution backward is slow for these shapes (2-8 channels in or out around a
    128-wide hidden layer) and was most of a Glow's training step; as GEMMs the step is 1.35x
    faster (bench/benchmark.py, ``flowvae_glow_conv2d`` is the ``conv`` path). The hidden layers run in
    one autograd Function whose backward masks the ReLU gradients in place (:class:`_HiddenLayers`).
    """

    def __init__(self, in_channels: int, out_channels: int, hidden: int, cond_dim: int = 0, cond_map_channels: int = 0,
                 zmap_channels: int = 0, kernel: int = 3):
        super().__init__()
        if kernel not in (1, 3):
            raise ValueError(f"coupling kernel must be 1 or 3, got {kernel}")
        self.kernel = kernel
        self.conv1 = nn.Conv2d(in_channels + cond_map_channels, hidden, kernel, padding=kernel // 2)
        self.conv2 = nn.Conv2d(hidden, hidden, 1)
        self.out = ZeroConv2d(hidden, out_channels, kernel)
        self.cond_proj = nn.Linear(cond_dim, hidden) if cond_dim > 0 else None
        self.zmap_proj = nn.Conv2d(zmap_channels, hidden, 1, bias=False) if zmap_channels > 0 else None
        self.cond_map_channels = cond_map_channels
        self.impl = "auto"  # auto | gemm | conv (model.coupling_impl); the weights are the same for both

    def resolved_impl(self, device: torch.device) -> str:
        # auto: GEMMs on CPU (measured faster there, see above); cuDNN convolutions on CUDA, a choice
        # not yet measured on a GPU.
        if self.impl == "auto":
            return "gemm" if device.type == "cpu" else "conv"
        return self.impl

    def _check(self, cond: Optional[Cond]) -> None:
        if self.cond_map_channels and (cond is None or cond.map is None):
            raise ValueError("this coupling expects a spatial conditioning map (cond.map)")
        if self.cond_proj is not None and (cond is None or cond.vec is None):
            raise ValueError("this coupling expects a global code (cond.vec)")
        if self.zmap_proj is not None and (cond is None or cond.zmap is None):
            raise ValueError("this coupling expects a spatial map decoded from z (cond.zmap)")

    def forward(self, x: Tensor, cond: Optional[Cond]) -> Tensor:
        self._check(cond)
        if self.cond_map_channels:
            x = torch.cat([x, cond.map.to(x.dtype)], 1)
        if self.resolved_impl(x.device) == "conv":
            return self._forward_conv(x, cond)
        return self._forward_gemm(x, cond)

    def _forward_conv(self, x: Tensor, cond: Optional[Cond]) -> Tensor:
        """The three layers as nn.Conv2d calls (cuDNN / mkldnn); z and its map enter as the same biases."""
        h = self.conv1(x)
        if self.cond_proj is not None:
            h = h + self.cond_proj(cond.vec.to(x.dtype)).to(h.dtype)[:, :, None, None]
        if self.zmap_proj is not None:
            h = h + self.zmap_proj(cond.zmap.to(x.dtype)).to(h.dtype)
        h = F.relu(self.conv2(F.relu(h)))
        return self.out(h)

    def _forward_gemm(self, x: Tensor, cond: Optional[Cond]) -> Tensor:
        n, _, height, width = x.shape
        hidden = self.conv1.out_channels
        # conv1 (3x3) as im2col of the (few) input channels + a matmul, conv2 (1x1) as a matmul, and the
        # last conv (hidden -> Cout, 3x3) as a matmul to per-tap outputs; rows are pixels.
        k = self.kernel
        cols = F.unfold(x, k, padding=k // 2).transpose(1, 2)                    # [N, HW, Cin*k*k]
        bias = self.conv1.bias
        if self.cond_proj is not None:
            bias = bias + self.cond_proj(cond.vec.to(x.dtype))                    # [N, hidden]: z as a channel bias
        if self.zmap_proj is not None:
            pix = self.zmap_proj(cond.zmap.to(x.dtype)).flatten(2).transpose(1, 2)   # [N, HW, hidden]
            bias = bias[:, None, :] + pix if bias.dim() == 2 else bias + pix
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        w_taps = self.out.weight.flip(2, 3).permute(0, 2, 3, 1).reshape(-1, hidden)  # [(Cout, kh, kw), hidden]
        taps = _HiddenLayers.apply(cols, self.conv1.weight.reshape(hidden, -1), bias,
                                   self.conv2.weight.reshape(hidden, hidden), self.conv2.bias, w_taps, dtype)
        # fold (col2im) sums each tap's output into its neighbour pixel: with the kernel flipped, exactly
        # the correlation conv2d computes, zero padding included.
        y = F.fold(taps.transpose(1, 2), (height, width), k, padding=k // 2)     # [N, Cout, H, W]
        return y + self.out.bias.to(y.dtype)[:, None, None]


class AffineCoupling(FlowLayer):
    def __init__(self, channels: int, hidden: int, cond_dim: int = 0, cond_map_channels: int = 0, clamp: float = 2.0,
                 zmap_channels: int = 0, kernel: int = 3, shift_clamp: float = 0.0, scale: str = "tanh"):
        super().__init__()
        if shift_clamp < 0:
            raise ValueError(f"shift_clamp must be >= 0 (0 = unbounded shift), got {shift_clamp}")
        if scale not in COUPLING_SCALES:
            raise ValueError(f"coupling scale must be one of {COUPLING_SCALES}, got {scale!r}")
        self.ca = channels // 2
        self.cb = channels - self.ca
        self.net = CouplingNet(self.ca, 2 * self.cb, hidden, cond_dim, cond_map_channels, zmap_channels, kernel)
        self.clamp = clamp
        self.shift_clamp = shift_clamp
        self.scale = scale

    def _params(self, xa: Tensor, cond: Optional[Cond]) -> tuple[Tensor, Tensor]:
        # Shift, scale and their log-det in float32 (float64 for float64 inputs) even if the network ran in bf16.
        h = self.net(xa, cond).to(logdet_dtype(xa))
        shift, raw = h[:, 0::2], h[:, 1::2]
        if self.shift_clamp > 0:
            shift = self.shift_clamp * torch.tanh(shift / self.shift_clamp)
        if self.scale == "sigmoid":  # never expands: log_s in (-clamp, 0), -0.127 at a zero raw output
            raw = F.logsigmoid(raw + 2.0)
        log_s = self.clamp * torch.tanh(raw / self.clamp)
        return shift, log_s

    def forward(self, x: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        xa, xb = x[:, : self.ca], x[:, self.ca :]
        shift, log_s = self._params(xa, cond)
        yb = ((xb + shift) * torch.exp(log_s)).to(x.dtype)
        return torch.cat([xa, yb], 1), sum_per_sample(log_s)

    def rebuild(self, y: Tensor, cond: Optional[Cond] = None):
        # One network pass serves both the inverse (xb from yb) and the recorded re-run of forward.
        xa = y[:, : self.ca].detach().clone().requires_grad_()
        shift, log_s = self._params(xa, cond)
        with torch.no_grad():
            xb = (y[:, self.ca :] * torch.exp(-log_s) - shift).to(y.dtype)
        xb.requires_grad_()
        yb = ((xb + shift) * torch.exp(log_s)).to(y.dtype)
        return torch.cat([xa.detach(), xb.detach()], 1), (xa, xb), torch.cat([xa, yb], 1), sum_per_sample(log_s)

    def extra_repr(self) -> str:
        return (f"clamp={self.clamp:g}" + (f", shift_clamp={self.shift_clamp:g}" if self.shift_clamp > 0 else "")
                + (f", scale={self.scale}" if self.scale != "tanh" else ""))

    def inverse(self, y: Tensor, cond: Optional[Cond] = None) -> tuple[Tensor, Tensor]:
        ya, yb = y[:, : self.ca], y[:, self.ca :]
        shift, log_s = self._params(ya, cond)
        xb = (yb * torch.exp(-log_s) - shift).to(y.dtype)
        return torch.cat([ya, xb], 1), -sum_per_sample(log_s)
