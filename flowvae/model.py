"""FlowVAE: a VAE whose decoder is a conditional Glow (or, with ``type: glow``, the Glow alone).

Images are uint8 ``[N, C, H, W]`` tensors (0..255) at every public method; the
model quantises them to ``n_bits`` internally. See objective.py for the bound
and design.md for the conventions.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .config import ModelConfig, config_from_dict
from .dequantization import UniformDequantizer, VariationalDequantizer
from .encoder import Encoder
from .flows import ConditionalGlow, data_dependent_init, standard_normal_logprob
from .objective import LN2, bpd_terms, free_bits_kl, gaussian_kl_per_dim, gaussian_log_prob
from .prior import build_prior


class FlowVAE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        c = cfg.image_channels
        h, w = cfg.image_size
        self.image_shape = (c, h, w)
        self.num_dims = c * h * w
        self.n_bits = cfg.n_bits
        self.hybrid = cfg.type == "hybrid"
        z_dim = cfg.z_dim if self.hybrid else 0
        self.glow = ConditionalGlow(self.image_shape, cfg.levels, cfg.steps, cfg.hidden, cond_dim=z_dim, clamp=cfg.coupling_clamp)
        if self.hybrid:
            self.encoder = Encoder(c, (h, w), z_dim, cfg.encoder_width, cfg.encoder_blocks, levels=cfg.levels)
            self.prior = build_prior(cfg.prior, z_dim, cfg.prior_layers, cfg.prior_hidden)
        else:
            self.encoder = None
            self.prior = None
        if cfg.dequantization == "uniform":
            self.dequantizer = UniformDequantizer()
        else:
            self.dequantizer = VariationalDequantizer(c, cfg.dequant_layers, cfg.dequant_hidden)
        self.register_buffer("initialized", torch.tensor(False))

    @classmethod
    def from_config(cls, cfg: Union[ModelConfig, dict]) -> "FlowVAE":
        if isinstance(cfg, dict):
            cfg = config_from_dict({"model": cfg}).model
        return cls(cfg)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----------------------------------------------------------------- input
    def _prepare(self, x: Tensor, name: str = "x") -> Tensor:
        """Check a uint8 image batch and return its n_bits integer values as float."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of uint8 images, got {type(x).__name__}")
        if x.dtype != torch.uint8:
            raise TypeError(f"{name} must be uint8 with values 0..255 (got {x.dtype}); "
                            f"convert float images in [0, 1] with (x * 255).round().to(torch.uint8)")
        if x.dim() == 3:
            raise ValueError(f"{name} must be a batch [N, C, H, W]; got one image {list(x.shape)}, use x.unsqueeze(0)")
        if x.dim() != 4:
            raise ValueError(f"{name} must have shape [N, C, H, W], got {list(x.shape)}")
        if tuple(x.shape[1:]) != self.image_shape:
            c, h, w = self.image_shape
            raise ValueError(f"{name} has shape {list(x.shape)}, but this model takes [N, {c}, {h}, {w}] "
                             f"({c} channel{'s' if c > 1 else ''}, {h}x{w})")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        x = x.to(self.device)
        if self.n_bits < 8:
            x = torch.div(x, 2 ** (8 - self.n_bits), rounding_mode="floor")
        return x.float()

    def _to_uint8(self, x_int: Tensor) -> Tensor:
        return (x_int.to(torch.int32) * 2 ** (8 - self.n_bits)).to(torch.uint8)

    def _centered(self, x_int: Tensor) -> Tensor:
        """Encoder / dequantiser input in [-0.5, 0.5]."""
        return (x_int + 0.5) / 2**self.n_bits - 0.5

    # ------------------------------------------------------------ the bound
    def _posterior(self, x_int: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(self._centered(x_int))

    def _terms(self, x_int: Tensor, deterministic: bool = False, posterior: Optional[tuple] = None) -> dict[str, Tensor]:
        """Per-image pieces of the bound for one draw of (z, u), in nats."""
        u, log_q_u = self.dequantizer(self._centered(x_int), deterministic)
        y = (x_int + u) / 2**self.n_bits - 0.5  # fixed shift, log-det 0
        out = {"log_q_u": log_q_u}
        z = None
        if self.hybrid:
            mu, log_sigma = posterior if posterior is not None else self._posterior(x_int)
            z = mu if deterministic else mu + torch.exp(log_sigma) * torch.randn_like(mu)
            log_q_z = gaussian_log_prob(z, mu, log_sigma)
            log_p_z = self.prior.log_prob(z)
            if self.prior.analytic_kl:
                kl_dims = gaussian_kl_per_dim(mu, log_sigma)
                out["kl"] = kl_dims.sum(1)
                out["kl_per_dim"] = kl_dims
            else:
                out["kl"] = log_q_z - log_p_z
            out.update(log_q_z=log_q_z, log_p_z=log_p_z, mu=mu)
        else:
            out["kl"] = torch.zeros_like(log_q_u)
        out["log_p_y"], out["eps"] = self.glow.log_prob(y, z)
        out["z"] = z
        return out

    def loss(self, x: Tensor) -> dict[str, Tensor]:
        """Training objective. Returns 'loss' (scalar: mean negative ELBO in bits/dim, with
        kl_beta / free_bits applied if configured) and per-image 'elbo_bpd', 'flow_bpd', 'kl_bpd',
        'dequant_bpd', 'kl_nats' (and 'z_mean', the posterior mean, for a hybrid)."""
        x_int = self._prepare(x)
        t = self._terms(x_int)
        out = bpd_terms(t["log_p_y"], t["log_q_u"], t["kl"], self.num_dims, self.n_bits)
        train_kl = t["kl"]
        if self.hybrid and (self.cfg.free_bits > 0 or self.cfg.kl_beta != 1.0):
            if self.cfg.free_bits > 0:
                if "kl_per_dim" in t:
                    train_kl = free_bits_kl(t["kl_per_dim"], self.cfg.free_bits)
                else:  # Monte-Carlo KL: floor the batch mean (per-image estimates are noisy, even negative)
                    floor = self.cfg.free_bits * self.cfg.z_dim
                    if train_kl.mean() < floor:
                        train_kl = torch.full_like(train_kl, floor)
            train_kl = self.cfg.kl_beta * train_kl
        train_bpd = out["flow_bpd"] + out["dequant_bpd"] + train_kl / (self.num_dims * LN2)
        out["loss"] = train_bpd.mean()
        if self.hybrid:
            out["z_mean"] = t["mu"]
        return out

    @torch.no_grad()
    def log_prob(self, x: Tensor, k: int = 1, chunk: int = 256) -> Tensor:
        """Per-image estimate of log P(x) in nats (a lower bound): k=1 the ELBO, k>1 the
        importance-weighted bound logsumexp_k(log w_k) - log k over k draws of (z, u)."""
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        x_int = self._prepare(x)
        n = x_int.shape[0]
        const = self.num_dims * self.n_bits * LN2
        if k == 1:
            t = self._terms(x_int)
            return t["log_p_y"] - t["log_q_u"] - t["kl"] - const
        posterior = self._posterior(x_int) if self.hybrid else None
        per_pass = max(1, min(k, chunk // n))
        log_w = []
        done = 0
        while done < k:
            m = min(per_pass, k - done)
            xr = x_int.repeat(m, 1, 1, 1)
            post = tuple(p.repeat(m, 1) for p in posterior) if posterior is not None else None
            t = self._terms(xr, posterior=post)
            w = t["log_p_y"] - t["log_q_u"]
            if self.hybrid:
                w = w + t["log_p_z"] - t["log_q_z"]
            log_w.append(w.view(m, n))
            done += m
        log_w = torch.cat(log_w, 0).double()
        return (torch.logsumexp(log_w, 0) - math.log(k)).float() - const

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation of every ActNorm from the batch ``x`` (uint8 [N, C, H, W]).
        Call once before training, on a large batch (train.init_batch_size)."""
        x_int = self._prepare(x)
        with data_dependent_init(self.glow):
            self._terms(x_int)
        self.initialized.fill_(True)

    # ------------------------------------------------------ codes and images
    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Optional[Tensor], Tensor]:
        """Deterministic codes: z = posterior mean (None for a flow-only model), and the local
        code eps (float [N, C, H, W]) with u at the centre of each bin."""
        t = self._terms(self._prepare(x), deterministic=True)
        return t["z"], t["eps"]

    @torch.no_grad()
    def decode(self, z: Optional[Tensor], eps: Tensor) -> Tensor:
        """Invert the flow and quantise: uint8 images. decode(*encode(x)) == x."""
        if not isinstance(eps, Tensor) or eps.dim() != 4:
            raise ValueError(f"eps must be a float tensor [N, {', '.join(map(str, self.image_shape))}]")
        eps = eps.to(self.device, torch.float32)
        if self.hybrid:
            if z is None or z.dim() != 2 or z.shape[1] != self.cfg.z_dim:
                raise ValueError(f"z must have shape [N, {self.cfg.z_dim}], got {None if z is None else list(z.shape)}")
            if z.shape[0] != eps.shape[0]:
                raise ValueError(f"z and eps hold {z.shape[0]} and {eps.shape[0]} images")
            z = z.to(self.device, torch.float32)
        else:
            z = None
        y, _ = self.glow.inverse(eps, z)
        x_int = torch.floor((y + 0.5) * 2**self.n_bits).clamp(0, 2**self.n_bits - 1)
        return self._to_uint8(x_int)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, z_temperature: float = 1.0) -> Tensor:
        """n uint8 samples: z ~ p(z) at z_temperature, eps ~ N(0, temperature^2 I)."""
        z = self.prior.sample(n, z_temperature) if self.hybrid else None
        eps = temperature * torch.randn(n, *self.image_shape, device=self.device)
        return self.decode(z, eps)

    @torch.no_grad()
    def swap(self, x_local: Tensor, x_global: Tensor) -> Tensor:
        """Images with the local code of x_local and the global code of x_global (same N)."""
        if not self.hybrid:
            raise ValueError("swap needs a global code: this is a flow-only (model.type=glow) model")
        if x_local.shape[0] != x_global.shape[0]:
            raise ValueError(f"x_local and x_global must hold the same number of images "
                             f"({x_local.shape[0]} vs {x_global.shape[0]})")
        _, eps = self.encode(x_local)
        z, _ = self.encode(x_global)
        return self.decode(z, eps)

    def extra_repr(self) -> str:
        return f"type={self.cfg.type}, image_shape={self.image_shape}, n_bits={self.n_bits}"

    def config_dict(self) -> dict:
        return asdict(self.cfg)
