"""FlowVAE: a VAE whose decoder is a conditional Glow (or, with ``type: glow``, the Glow alone).

Images are uint8 ``[N, C, H, W]`` tensors (0..255) at every public method; the
model quantises them to ``n_bits`` internally. See objective.py for the bound
and the README for the conventions.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .config import Config, ModelConfig, config_from_dict
from .dequantization import UniformDequantizer, VariationalDequantizer
from .encoder import Encoder
from .flows import ConditionalGlow, data_dependent_init, standard_normal_logprob
from .hierarchical import HierarchicalLatents
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
        self.hierarchical = self.hybrid and cfg.injection == "hierarchical"
        z_dim = cfg.z_dim if self.hybrid else 0
        maps = [cfg.hier_channels] * cfg.levels if self.hierarchical else None
        self.glow = ConditionalGlow(self.image_shape, cfg.levels, cfg.level_steps or cfg.steps, cfg.hidden, cond_dim=z_dim,
                                    cond_map_channels=maps, clamp=cfg.coupling_clamp,
                                    zmap_channels=cfg.z_maps if self.hybrid else 0,
                                    kernels=cfg.coupling_kernels or 3)
        self.glow.set_coupling_impl(cfg.coupling_impl)
        self.latents = None  # the per-level latents z_l of the hierarchical variant
        if self.hybrid:
            self.encoder = Encoder(c, (h, w), z_dim, cfg.encoder_width, cfg.encoder_blocks, levels=cfg.levels)
            self.prior = build_prior(cfg.prior, z_dim, cfg.prior_layers, cfg.prior_hidden)
            if self.hierarchical:
                shapes = [(cfg.hier_channels, ch, cw) for _, ch, cw in self.glow.level_shapes()]
                self.latents = HierarchicalLatents(shapes, cfg.encoder_width, z_dim, cfg.hier_prior, cfg.hier_hidden)
        else:
            self.encoder = None
            self.prior = None
        # The VAE code: [z] for global injection, [z, z_0 (flat), ..., z_{L-1} (flat)] for hierarchical.
        self.code_dim = z_dim + (self.latents.dim if self.latents is not None else 0)
        if cfg.dequantization == "uniform":
            self.dequantizer = UniformDequantizer()
        else:
            self.dequantizer = VariationalDequantizer(c, cfg.dequant_layers, cfg.dequant_hidden)
        self.register_buffer("initialized", torch.tensor(False))

    @classmethod
    def from_config(cls, cfg: Union[ModelConfig, Config, dict]) -> "FlowVAE":
        if isinstance(cfg, Config):
            cfg = cfg.model
        if isinstance(cfg, dict):
            cfg = config_from_dict({"model": cfg}).model
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"from_config takes a model config (load_config(...).model, a Config, or a dict of "
                            f"model.* keys such as {{'type': 'hybrid'}}), got {type(cfg).__name__} {cfg!r}")
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

    def _require_initialized(self, what: str) -> None:
        if not bool(self.initialized):
            raise RuntimeError(f"{what} on a model that was never initialised: call model.initialize(x) once on a "
                               f"large batch of training images (or load a trained model with load_checkpoint)")

    @staticmethod
    def _check_count(value, name: str, minimum: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"{name} must be >= {minimum} and an integer, got {value!r}")
        return value

    @staticmethod
    def _check_temperature(value, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"{name} must be a finite number >= 0 (Glow samples at 0.7), got {value!r}")
        return float(value)

    @staticmethod
    def _check_code(t, name: str, what: str) -> None:
        if not isinstance(t, Tensor) or not t.is_floating_point():
            got = t.dtype if isinstance(t, Tensor) else type(t).__name__
            hint = " (images? decode takes codes: use decode(*encode(x)))" if isinstance(t, Tensor) and t.dtype == torch.uint8 else ""
            raise TypeError(f"{name} must be a float tensor, {what}; got {got}{hint}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name} contains NaN or inf values")

    def _to_uint8(self, x_int: Tensor) -> Tensor:
        return (x_int.to(torch.int32) * 2 ** (8 - self.n_bits)).to(torch.uint8)

    def _centered(self, x_int: Tensor) -> Tensor:
        """Encoder / dequantiser input in [-0.5, 0.5]."""
        return (x_int + 0.5) / 2**self.n_bits - 0.5

    # ------------------------------------------------------------ the code
    def latent_groups(self) -> dict[str, slice]:
        """Where each latent group lives in the code vector: 'global' and, for the hierarchical
        variant, 'level0' (finest) ... 'level{L-1}' (coarsest)."""
        groups = {"global": slice(0, self.cfg.z_dim)} if self.hybrid else {}
        if self.latents is not None:
            for lvl in range(self.latents.levels):
                sl = self.latents.offsets(lvl)
                groups[f"level{lvl}"] = slice(self.cfg.z_dim + sl.start, self.cfg.z_dim + sl.stop)
        return groups

    def split_code(self, code: Tensor) -> tuple[Tensor, Optional[list[Tensor]]]:
        """code [N, code_dim] -> (global z [N, z_dim], list of z_l [N, C, H_l, W_l] or None)."""
        z = code[:, : self.cfg.z_dim]
        return z, (self.latents.split(code[:, self.cfg.z_dim :]) if self.latents is not None else None)

    def group_shape(self, level: Union[int, str], n: int = 1) -> tuple[int, ...]:
        """Shape of n draws of one latent group: 'global' -> (n, z_dim), level l -> (n, C, H_l, W_l)."""
        if not self.hybrid:
            raise ValueError("this flow-only (model.type=glow) model has no latent groups")
        if level == "global":
            return (n, self.cfg.z_dim)
        ok = self.latents is not None and str(level).lstrip("-").isdigit() and 0 <= int(level) < self.latents.levels
        if not ok:
            valid = "'global'" + (f" or a level 0..{self.latents.levels - 1}" if self.latents is not None else "")
            raise ValueError(f"level must be {valid} for this model (injection={self.cfg.injection}), got {level!r}")
        return (n, *self.latents.shapes[int(level)])

    def sample_code(self, n: int, temperature: float = 1.0) -> Tensor:
        """n codes from the prior: z ~ p(z), then (hierarchical) z_l ~ p(z_l | ...) coarsest first."""
        z = self.prior.sample(n, temperature)
        if self.latents is None:
            return z
        return torch.cat([z, self.latents.join(self.latents.sample(z, temperature))], 1)

    # ------------------------------------------------------------ the bound
    def _posterior(self, x_int: Tensor) -> tuple[Tensor, Tensor]:
        """(mu, log_sigma) of q(code | x), float32 [N, code_dim]."""
        feats = self.encoder.features(self._centered(x_int))
        mu, log_sigma = self.encoder.posterior(feats)
        if self.latents is not None:
            mu_l, ls_l = self.latents.posterior(feats)
            mu, log_sigma = torch.cat([mu, mu_l], 1), torch.cat([log_sigma, ls_l], 1)
        return mu, log_sigma

    def _terms(self, x_int: Tensor, deterministic: bool = False, posterior: Optional[tuple] = None) -> dict[str, Tensor]:
        """Per-image pieces of the bound for one draw of (z, u), in nats."""
        u, log_q_u = self.dequantizer(self._centered(x_int), deterministic)
        y = (x_int + u) / 2**self.n_bits - 0.5  # fixed shift, log-det 0
        out = {"log_q_u": log_q_u}
        code = z = levels = None
        if self.hybrid:
            mu, log_sigma = posterior if posterior is not None else self._posterior(x_int)
            code = mu if deterministic else mu + torch.exp(log_sigma) * torch.randn_like(mu)
            z, levels = self.split_code(code)
            d = self.cfg.z_dim
            log_q_z = gaussian_log_prob(code, mu, log_sigma)  # the whole code, for the IW bound
            log_p_z = self.prior.log_prob(z)
            if self.prior.analytic_kl:
                kl_dims = gaussian_kl_per_dim(mu[:, :d], log_sigma[:, :d])
                out["kl_global"] = kl_dims.sum(1)
                out["kl_per_dim"] = kl_dims
            else:
                out["kl_global"] = gaussian_log_prob(z, mu[:, :d], log_sigma[:, :d]) - log_p_z
            out["kl"] = out["kl_global"]
            if self.latents is not None:
                kl_levels, log_p_levels, kl_level_dims = self.latents.kl_and_log_p(mu[:, d:], log_sigma[:, d:], code[:, d:], z)
                log_p_z = log_p_z + log_p_levels
                out["kl_levels"] = kl_levels  # [N, L] nats, finest level first
                out["kl_level_dims"] = kl_level_dims
                out["kl"] = out["kl"] + kl_levels.sum(1)
            out.update(log_q_z=log_q_z, log_p_z=log_p_z, mu=mu)
        else:
            out["kl"] = torch.zeros_like(log_q_u)
        out["log_p_y"], out["eps"] = self.glow.log_prob(y, z, levels)
        out["z"] = code
        return out

    def loss(self, x: Tensor, kl_weight: float = 1.0) -> dict[str, Tensor]:
        """Training objective. Returns 'loss' (scalar: mean negative ELBO in bits/dim, with
        kl_beta / free_bits / level_free_bits and the warm-up factor ``kl_weight`` applied to the KL)
        and per-image 'elbo_bpd', 'flow_bpd', 'kl_bpd', 'dequant_bpd', 'kl_nats' (and 'z_mean', the
        posterior mean, for a hybrid). The per-image terms are always the true bound."""
        self._require_initialized("loss")
        x_int = self._prepare(x)
        t = self._terms(x_int)
        out = bpd_terms(t["log_p_y"], t["log_q_u"], t["kl"], self.num_dims, self.n_bits)
        train_kl = t["kl"]
        if self.hybrid and self.cfg.level_free_bits > 0 and "kl_level_dims" in t:
            floored = sum(free_bits_kl(k, self.cfg.level_free_bits) for k in t["kl_level_dims"])
            train_kl = train_kl - t["kl_levels"].sum(1) + floored
        if self.hybrid and (self.cfg.free_bits > 0 or self.cfg.kl_beta != 1.0 or kl_weight != 1.0):
            if self.cfg.free_bits > 0:  # on the global code; the level latents' KL is left as it is
                if "kl_per_dim" in t:
                    train_kl_global = free_bits_kl(t["kl_per_dim"], self.cfg.free_bits)
                else:  # Monte-Carlo KL: floor the batch mean (per-image estimates are noisy, even negative)
                    train_kl_global = t["kl_global"]
                    floor = self.cfg.free_bits * self.cfg.z_dim
                    if train_kl_global.mean() < floor:
                        train_kl_global = torch.full_like(train_kl_global, floor)
                train_kl = train_kl - t["kl_global"] + train_kl_global
            train_kl = self.cfg.kl_beta * kl_weight * train_kl
        train_bpd = out["flow_bpd"] + out["dequant_bpd"] + train_kl / (self.num_dims * LN2)
        out["loss"] = train_bpd.mean()
        if self.hybrid:
            out["z_mean"] = t["mu"]
            out["z_sample"] = t["z"]  # the drawn code (model.tc_weight's discriminator reads its global part)
            out["kl_global_nats"] = t["kl_global"]
            if "kl_levels" in t:
                for lvl in range(t["kl_levels"].shape[1]):
                    out[f"kl_level{lvl}_nats"] = t["kl_levels"][:, lvl]
        return out

    @torch.no_grad()
    def log_prob(self, x: Tensor, k: int = 1, chunk: int = 256) -> Tensor:
        """Per-image estimate of log P(x) in nats (a lower bound): k=1 the ELBO, k>1 the
        importance-weighted bound logsumexp_k(log w_k) - log k over k draws of (z, u)."""
        self._check_count(k, "k")
        self._check_count(chunk, "chunk")
        self._require_initialized("log_prob")
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
        """Deterministic codes: z = posterior mean of the VAE code [N, code_dim] (None for a flow-only
        model; for the hierarchical variant [z, z_0, ..., z_{L-1}] flattened, see split_code), and the
        local code eps (float [N, C, H, W]) with u at the centre of each bin."""
        self._require_initialized("encode")
        with torch.autocast(self.device.type, enabled=False):  # exact codes even under bf16/fp16 autocast
            t = self._terms(self._prepare(x), deterministic=True)
        return t["z"], t["eps"]

    @torch.no_grad()
    def decode(self, z: Optional[Tensor], eps: Tensor) -> Tensor:
        """Invert the flow and quantise: uint8 images. decode(*encode(x)) == x."""
        self._check_code(eps, "eps", "the local code from encode()")
        if z is not None:
            self._check_code(z, "z", "the code from encode() or sample_code()")
        if not isinstance(eps, Tensor) or eps.dim() != 4:
            raise ValueError(f"eps must be a float tensor [N, {', '.join(map(str, self.image_shape))}]")
        eps = eps.to(self.device, torch.float32)
        levels = None
        if self.hybrid:
            if z is None or z.dim() != 2 or z.shape[1] != self.code_dim:
                raise ValueError(f"z must have shape [N, {self.code_dim}], got {None if z is None else list(z.shape)}")
            if z.shape[0] != eps.shape[0]:
                raise ValueError(f"z and eps hold {z.shape[0]} and {eps.shape[0]} images")
            z, levels = self.split_code(z.to(self.device, torch.float32))
        else:
            z = None
        with torch.autocast(self.device.type, enabled=False):  # the exact inverse of encode's float32 pass
            y, _ = self.glow.inverse(eps, z, levels)
        x_int = torch.floor((y + 0.5) * 2**self.n_bits).clamp(0, 2**self.n_bits - 1)
        return self._to_uint8(x_int)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, z_temperature: float = 1.0) -> Tensor:
        """n uint8 samples: z ~ p(z) at z_temperature, eps ~ N(0, temperature^2 I)."""
        self._check_count(n, "n")
        self._check_temperature(temperature, "temperature")
        self._check_temperature(z_temperature, "z_temperature")
        with torch.autocast(self.device.type, enabled=False):  # z from the prior in float32, like decode
            z = self.sample_code(n, z_temperature) if self.hybrid else None
        eps = temperature * torch.randn(n, *self.image_shape, device=self.device)
        return self.decode(z, eps)

    @torch.no_grad()
    def resample_level(self, x: Tensor, level: Union[int, str], temperature: float = 1.0,
                       noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images like ``x`` (uint8) with one latent group re-drawn from its prior and everything else
        (the other groups and eps) held: ``level`` is 'global' (z) or a level index l (z_l; hierarchical
        models). ``noise`` (shape of the group) replaces the standard-normal draw, ``generator`` seeds it;
        with a top-down prior z_l is drawn given the held z_{l+1} (or z)."""
        if not self.hybrid:
            raise ValueError("resample_level needs latent codes: this is a flow-only (model.type=glow) model")
        self._check_temperature(temperature, "temperature")
        code, eps = self.encode(x)
        return self.decode(self.resample_code(code, level, temperature, noise, generator), eps)

    @torch.no_grad()
    def resample_code(self, code: Tensor, level: Union[int, str], temperature: float = 1.0,
                      noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``resample_level`` on codes (from ``encode``): the code with one group re-drawn, the rest held."""
        n = code.shape[0]
        z, levels = self.split_code(code.to(self.device, torch.float32))
        shape = self.group_shape(level, n)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=generator.device if generator else self.device)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {list(shape)}, got {list(noise.shape)}")
        noise = noise.to(self.device, torch.float32)
        if level == "global":
            z = self.prior.sample(n, temperature, noise=noise)
        else:
            lvl = int(level)
            fixed = [None if i == lvl else t for i, t in enumerate(levels)]
            levels = self.latents.sample(z, temperature, fixed=fixed, noise=[noise if i == lvl else None for i in range(len(levels))])
        return torch.cat([z] + ([self.latents.join(levels)] if levels is not None else []), 1)

    @torch.no_grad()
    def swap(self, x_local: Tensor, x_global: Tensor) -> Tensor:
        """Images with the local code of x_local and the global code of x_global (same N)."""
        if not self.hybrid:
            raise ValueError("swap needs a global code: this is a flow-only (model.type=glow) model")
        self._prepare(x_local, "x_local")
        self._prepare(x_global, "x_global")
        if x_local.shape[0] != x_global.shape[0]:
            raise ValueError(f"x_local and x_global must hold the same number of images "
                             f"({x_local.shape[0]} vs {x_global.shape[0]})")
        _, eps = self.encode(x_local)
        z, _ = self.encode(x_global)
        return self.decode(z, eps)

    # ------------------------------------------ uses: anomaly scores, inpainting, denoising
    def score(self, x: Tensor, k: int = 1, split: Optional[bool] = None, reference=None) -> dict[str, Tensor]:
        """Per-image anomaly scores in bits/dim, higher = more anomalous: 'bpd' (negative ELBO, k draws),
        'global_bpd' / 'local_bpd' (hybrid: KL of the code / the rest), 'complexity_bpd' (PNG code
        length), 'ic_bpd' (bpd - complexity_bpd, Serra et al. 2020) and, with a ``reference`` model
        (a local background flow), 'reference_bpd' and 'lr_bpd' (bpd - reference_bpd). See engine/score.py."""
        from .engine.score import score_images
        return score_images(self, x, k=k, split=split, reference=reference)

    def inpaint(self, x: Tensor, mask: Tensor, samples: int = 0, steps: int = 200, **kw) -> dict[str, Tensor]:
        """Fill the pixels where the bool ``mask`` is True: {'map': uint8 [N, C, H, W], 'samples':
        uint8 [S, N, C, H, W]}; unmasked pixels are bit-exact copies of x. See engine/restore.py."""
        from .engine.restore import inpaint
        return inpaint(self, x, mask, samples=samples, steps=steps, **kw)

    def denoise(self, x_noisy: Tensor, sigma: Optional[float] = None, salt_pepper: bool = False,
                steps: int = 200, **kw) -> Tensor:
        """Clean estimate (uint8) of Gaussian-noised (std ``sigma``, pixel values) or salt-and-pepper images."""
        from .engine.restore import denoise
        return denoise(self, x_noisy, sigma=sigma, salt_pepper=salt_pepper, steps=steps, **kw)

    def extra_repr(self) -> str:
        return f"type={self.cfg.type}, image_shape={self.image_shape}, n_bits={self.n_bits}"

    def config_dict(self) -> dict:
        return asdict(self.cfg)
