"""FlowVAE: a VAE whose decoder is a conditional Glow (or, with ``type: glow``, the Glow alone).

Images are uint8 ``[N, C, H, W]`` tensors (0..255) at every public method; the
model quantises them to ``n_bits`` internally. The model computes the terms of the
bound (``terms``); objective.py turns them into the bound and the training loss. The
uses (``score``, ``inpaint``, ``denoise``) are implemented in flowvae/uses/, a layer
that works on a model and never imports it (nor the engine).
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Optional, Union

import torch
from torch import Tensor, nn

from .config import Config, LossConfig, ModelConfig, config_from_dict
from .dequantization import UniformDequantizer, VariationalDequantizer
from .flows import ConditionalGlow, data_dependent_init
from .latents import Latents, latents_class
from .checks import (MAX_IW_DRAWS, SAMPLE_BATCH, _as_scalar, check_count, check_dense, check_draws, check_flag,  # noqa: F401
                     check_number)
from .objective import Bound, Objective
from .sizes import check_fits, human_bytes
from .uses import restore as _restore, score as _score


class FlowVAE(nn.Module):
    def __init__(self, cfg: ModelConfig, loss: Optional[LossConfig] = None):
        super().__init__()
        self.cfg = cfg
        c = cfg.image_channels
        h, w = cfg.image_size
        self.image_shape = (c, h, w)
        self.num_dims = c * h * w
        self.n_bits = cfg.n_bits
        structure = latents_class(cfg)
        z_dim, maps = structure.condition_shapes(cfg)  # what the latents will hand each Glow level
        self.glow = ConditionalGlow(self.image_shape, cfg.levels, cfg.level_steps or cfg.steps, cfg.hidden, cond_dim=z_dim,
                                    cond_map_channels=maps, clamp=cfg.coupling_clamp,
                                    zmap_channels=cfg.z_maps if z_dim else 0, kernels=cfg.coupling_kernels or 3,
                                    shift_clamp=cfg.shift_clamp, coupling_scale=cfg.coupling_scale,
                                    split_reads_kept=cfg.split_prior == "kept",
                                    base_tail=cfg.base_tail)
        self.glow.set_coupling_impl(cfg.coupling_impl)
        self.latents: Latents = structure(cfg, self.image_shape, self.glow.level_shapes())
        if cfg.dequantization == "uniform":
            self.dequantizer = UniformDequantizer()
        else:
            self.dequantizer = VariationalDequantizer(c, cfg.dequant_layers, cfg.dequant_hidden)
        self.register_buffer("initialized", torch.tensor(False))
        self.bound = Bound(self.num_dims, self.n_bits)  # nats -> bits/dim (objective.py)
        self.objective = Objective(loss)  # the training loss's schedule (not a module: no weights)

    @property
    def hybrid(self) -> bool:
        """Whether the model has a code (a VAE encoder) at all."""
        return bool(self.latents)

    @property
    def hierarchical(self) -> bool:
        return any(g.role == "map" for g in self.latents.groups.values())

    @property
    def code_dim(self) -> int:
        return self.latents.dim

    @classmethod
    def from_config(cls, cfg: Union[ModelConfig, Config, dict]) -> "FlowVAE":
        if isinstance(cfg, Config):
            return cls(cfg.model, cfg.loss)
        if isinstance(cfg, dict):  # model.* keys (and the loss keys older configs kept there, e.g. kl_beta)
            full = config_from_dict({"model": cfg})
            return cls(full.model, full.loss)
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"from_config takes a Config (load_config(...), with its loss: section), a model config "
                            f"(load_config(...).model; the default loss), or a dict of model.* keys such as "
                            f"{{'type': 'hybrid'}}, got {type(cfg).__name__} {cfg!r}")
        return cls(cfg)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ----------------------------------------------------------------- input
    def _prepare(self, x: Tensor, name: str = "x") -> Tensor:
        """Check a uint8 image batch and return its n_bits integer values as float."""
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of uint8 images, got {type(x).__name__}")
        check_dense(x, name)
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

    _check_count = staticmethod(check_count)

    @staticmethod
    def _check_temperature(value, name: str) -> float:
        return check_number(value, name, hint=" (Glow samples at 0.7)")

    _check_k = staticmethod(check_draws)

    @staticmethod
    def _check_code(t, name: str, what: str) -> None:
        if isinstance(t, Tensor):
            check_dense(t, name)
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
        """Where each latent group lives in the flat code: 'global' and, for the hierarchical
        variant, 'level0' (finest) ... 'level{L-1}' (coarsest)."""
        return self.latents.slices()

    def split_code(self, code: Tensor) -> tuple[Tensor, Optional[list[Tensor]]]:
        """flat code [N, code_dim] -> (global z [N, z_dim], list of z_l [N, C, H_l, W_l] or None)."""
        return self.latents.conditioning(self.latents.unflatten(code))

    def _group_name(self, level: Union[int, str]) -> str:
        if not self.hybrid:
            raise ValueError("this flow-only (model.type=glow) model has no latent groups")
        name = "global" if level == "global" else f"level{level}"
        if isinstance(level, bool) or name not in self.latents.groups:
            levels = [n[len("level"):] for n in self.latents.names if n != "global"]
            valid = "'global'" + (f" or a level {levels[0]}..{levels[-1]}" if levels else "")
            raise ValueError(f"level must be {valid} for this model (injection={self.cfg.injection}), got {level!r}")
        return name

    def group_shape(self, level: Union[int, str], n: int = 1) -> tuple[int, ...]:
        """Shape of n draws of one latent group: 'global' -> (n, z_dim), level l -> (n, C, H_l, W_l)."""
        return (n, *self.latents.groups[self._group_name(level)].shape)

    def sample_code(self, n: int, temperature: float = 1.0) -> Tensor:
        """n flat codes from the prior, parents first (z ~ p(z), then z_l ~ p(z_l | ...) coarsest first)."""
        return self.latents.flatten(self.latents.sample(n, temperature, device=self.device))

    # ------------------------------------------------------------ the bound
    @torch.no_grad()
    def posterior(self, x: Tensor) -> dict[str, tuple[Tensor, Tensor]]:
        """q(code | x) of uint8 images ``x`` by latent group: {'global': (mu, log_sigma) [N, z_dim], and for
        the hierarchical variant 'level{l}': (mu, log_sigma) [N, C, H_l, W_l]}, float32; {} for a flow-only model.
        A ladder group's entry is q given its parent's posterior mean."""
        self._require_initialized("posterior")
        with torch.autocast(self.device.type, enabled=False):
            return self._mean_posterior(self._prepare(x))

    def _mean_posterior(self, x_int: Tensor) -> dict:
        """q(code | x) by group, each group given its parent's posterior mean."""
        post = self.latents.posterior(self._centered(x_int))
        return self.latents.draw(post, deterministic=True)[0] if post else post

    def _posterior(self, x_int: Tensor) -> tuple[Tensor, Tensor]:
        """Flat (mu, log_sigma) of q(code | x), float32 [N, code_dim] (as ``posterior``)."""
        post = self._mean_posterior(x_int)
        return (self.latents.flatten({n: p[0] for n, p in post.items()}),
                self.latents.flatten({n: p[1] for n, p in post.items()}))

    def terms(self, x_int: Tensor, deterministic: bool = False, posterior: Optional[dict] = None) -> dict:
        """Per-image pieces of the bound for one draw of (code, u), in nats: 'log_p_y', 'log_q_u', 'eps',
        'posterior' and 'code' (named, see latents/base.py; empty for a flow-only model), 'kl'
        ({group: (KL [N], KL per dim or None)}) and 'kl_total' [N]. ``x_int``: the n_bits values (float, as
        ``_prepare`` returns them; continuous values v - 1/2 with ``deterministic`` score y = v / 2^b - 1/2).
        ``posterior`` replaces q(code | x) (e.g. repeated for importance sampling). objective.py
        assembles the bound from them."""
        xc = self._centered(x_int)  # what the dequantiser and the encoder read
        u, log_q_u = self.dequantizer(xc, deterministic)
        y = (x_int + u) / 2**self.n_bits - 0.5  # fixed shift, log-det 0
        post = posterior if posterior is not None else self.latents.posterior(xc)
        post, code = self.latents.draw(post, deterministic)  # q of each group given its drawn parent
        log_p_y, eps = self.glow.log_prob(y, *self.latents.conditioning(code))
        kl = self.latents.kl(post, code)
        kl_total = sum(v[0] for v in kl.values()) if kl else torch.zeros_like(log_q_u)
        return {"log_p_y": log_p_y, "log_q_u": log_q_u, "eps": eps, "posterior": post, "code": code,
                "kl": kl, "kl_total": kl_total}

    def loss(self, x: Tensor, kl_weight: Union[None, float, dict] = None) -> dict[str, Tensor]:
        """The training objective (``Objective.loss``) under this model's ``loss:`` config on uint8 images
        ``x``: 'loss' (scalar) and per image 'elbo_bpd', 'flow_bpd', 'kl_bpd', 'dequant_bpd', 'kl_nats',
        'kl_{group}_nats' and, for a model with a code, 'z_mean' (posterior mean) and 'z_sample' (the drawn
        code), flat, and 'code' (the drawn code by group, e.g. ``out['code']['global']``). The per-image
        terms are always the true bound."""
        self._require_initialized("loss")
        t = self.terms(self._prepare(x))
        sizes = {name: g.size for name, g in self.latents.groups.items()}
        out = self.objective.loss(t, self.bound, sizes, kl_weight)
        if t["code"]:
            out["z_mean"] = self.latents.flatten({n: mu for n, (mu, _) in t["posterior"].items()})
            out["z_sample"] = self.latents.flatten(t["code"])
            out["code"] = t["code"]
        return out

    @torch.no_grad()
    def log_prob(self, x: Tensor, k: int = 1, chunk: int = 256) -> Tensor:
        """Per-image lower bound on log P(x) in nats: k=1 the ELBO, k>1 the importance-weighted bound
        over k draws of (code, u) (``Bound.elbo``, ``Bound.iw``), ``chunk`` images per forward pass."""
        k = self._check_k(k)
        chunk = check_count(chunk, "chunk")
        self._require_initialized("log_prob")
        x_int = self._prepare(x)  # x checked before the memory estimate
        n = x_int.shape[0]
        per_pass = n * (max(1, min(k, chunk // n)) if k > 1 else 1)  # as _log_weights splits the draws
        self._check_work(0, per_pass, f"log_prob of {n:,} images (k={k:,}, chunk={chunk:,}: {per_pass:,} images per pass)",
                         "Pass fewer images at once, or a smaller chunk.")
        if k == 1:
            return self.bound.elbo(self.terms(x_int))
        return self.bound.iw(self._log_weights(x_int, k, chunk))

    def _log_weights(self, x_int: Tensor, k: int, chunk: int) -> Tensor:
        """log w [k, N] of k draws of (code, u) per image, the posterior computed once."""
        n = x_int.shape[0]
        posterior = self.latents.posterior(self._centered(x_int)) if self.latents else {}
        per_pass = max(1, min(k, chunk // n))
        log_w, done = [], 0
        while done < k:
            m = min(per_pass, k - done)
            post = {name: tuple(p.repeat(m, *([1] * (p.dim() - 1))) for p in mu_ls) for name, mu_ls in posterior.items()}
            t = self.terms(x_int.repeat(m, 1, 1, 1), posterior=post)
            if t["code"]:
                t["log_p_code"] = self.latents.log_p(t["code"])
                t["log_q_code"] = self.latents.log_q(t["posterior"], t["code"])
            log_w.append(Bound.log_weight(t).view(m, n))
            done += m
        return torch.cat(log_w, 0)

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        """Data-dependent initialisation of every ActNorm from the batch ``x`` (uint8 [N, C, H, W]).
        Call once before training, on a large batch (train.init_batch_size)."""
        x_int = self._prepare(x)
        with data_dependent_init(self.glow):
            self.terms(x_int)
        self.initialized.fill_(True)

    # ------------------------------------------------------ codes and images
    @torch.no_grad()
    def encode(self, x: Tensor) -> tuple[Optional[Tensor], Tensor]:
        """Deterministic codes: z = posterior mean of the VAE code [N, code_dim] (None for a flow-only
        model; for the hierarchical variant [z, z_0, ..., z_{L-1}] flattened, see split_code), and the
        local code eps (float [N, C, H, W]) with u at the centre of each bin."""
        self._require_initialized("encode")
        with torch.autocast(self.device.type, enabled=False):  # exact codes even under bf16/fp16 autocast
            t = self.terms(self._prepare(x), deterministic=True)
        return (self.latents.flatten(t["code"]) if t["code"] else None), t["eps"]

    @torch.no_grad()
    def decode(self, z: Optional[Tensor], eps: Tensor) -> Tensor:
        """Invert the flow and quantise: uint8 images. decode(*encode(x)) == x."""
        self._check_code(eps, "eps", "the local code from encode()")
        if z is not None:
            self._check_code(z, "z", "the code from encode() or sample_code()")
        if not isinstance(eps, Tensor) or eps.dim() != 4:
            raise ValueError(f"eps must be a float tensor [N, {', '.join(map(str, self.image_shape))}]")
        eps = eps.to(self.device, torch.float32)
        cond: tuple = (None, None)
        if self.hybrid:
            if z is None or z.dim() != 2 or z.shape[1] != self.code_dim:
                raise ValueError(f"z must have shape [N, {self.code_dim}], got {None if z is None else list(z.shape)}")
            if z.shape[0] != eps.shape[0]:
                raise ValueError(f"z and eps hold {z.shape[0]} and {eps.shape[0]} images")
            cond = self.split_code(z.to(self.device, torch.float32))
        with torch.autocast(self.device.type, enabled=False):  # the exact inverse of encode's float32 pass
            y, _ = self.glow.inverse(eps, *cond)
        x_int = torch.floor((y + 0.5) * 2**self.n_bits).clamp(0, 2**self.n_bits - 1)
        return self._to_uint8(x_int)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, z_temperature: float = 1.0, batch: int = SAMPLE_BATCH,
               progress: Optional[bool] = None) -> Tensor:
        """n uint8 samples: z ~ p(z) at z_temperature, eps from the flow's base (N(0, I), or with
        ``model.base_tail`` its heavy-tailed form) scaled by temperature, drawn and decoded
        ``batch`` images at a time (the same seed and batch give the same images). The output's memory is
        checked up front: a request that cannot fit is refused with its size. ``progress`` shows a progress
        bar (default: when more than 8 batches)."""
        n = check_count(n, "n")
        temperature = self._check_temperature(temperature, "temperature")
        z_temperature = self._check_temperature(z_temperature, "z_temperature")
        batch = check_count(batch, "batch")
        c, h, w = self.image_shape
        self._check_work(n * self.num_dims, min(n, batch), f"sample(n={n:,}) ({n:,} images of {c}x{h}x{w}, "
                         f"{human_bytes(n * self.num_dims)} as uint8)", "Ask for fewer images, or draw them in parts.")
        from .runtime import Progress

        out = torch.empty((n, *self.image_shape), dtype=torch.uint8, device=self.device)
        bar = Progress(total=n, desc="sampling", unit="img", leave=False,
                       enabled=n > 8 * batch if progress is None else bool(progress))
        for i in range(0, n, batch):
            m = min(batch, n - i)
            with torch.autocast(self.device.type, enabled=False):  # z from the prior in float32, like decode
                z = self.sample_code(m, z_temperature) if self.hybrid else None
            eps = temperature * self.glow.base.sample((m, *self.image_shape), device=self.device)
            out[i : i + m] = self.decode(z, eps)
            bar.update(m)
        bar.close()
        return out

    def _check_work(self, kept: int, images: int, what: str, fix: str) -> None:
        """Refuse a call that keeps ``kept`` bytes and runs ``images`` images through the model at once when
        that exceeds the device's free memory. The working set per image is estimated as the image and the
        codes in float32 twice and three coupling-net activations of ``hidden`` channels at half resolution:
        on the shipped Fashion-MNIST model (hidden 128) that is 0.29 MiB, against 0.29-0.39 MiB of peak
        resident memory measured per image for sample() and log_prob() on 256 and 1024 images (CPU)."""
        _, h, w = self.image_shape
        per_image = 4 * (2 * self.num_dims + 2 * self.code_dim) + 3 * 4 * self.cfg.hidden * (h // 2) * (w // 2)
        check_fits(kept + images * per_image, what, self.device, fix)

    @torch.no_grad()
    def resample_level(self, x: Tensor, level: Union[int, str], temperature: float = 1.0,
                       noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """Images like ``x`` (uint8) with one latent group re-drawn from its prior and everything else
        (the other groups and eps) held: ``level`` is 'global' (z) or a level index l (z_l; hierarchical
        models). ``noise`` (shape of the group) replaces the standard-normal draw, ``generator`` seeds it;
        with a top-down prior z_l is drawn given the held z_{l+1} (or z)."""
        if not self.hybrid:
            raise ValueError("resample_level needs latent codes: this is a flow-only (model.type=glow) model")
        temperature = self._check_temperature(temperature, "temperature")
        code, eps = self.encode(x)
        return self.decode(self.resample_code(code, level, temperature, noise, generator), eps)

    @torch.no_grad()
    def resample_code(self, code: Tensor, level: Union[int, str], temperature: float = 1.0,
                      noise: Optional[Tensor] = None, generator: Optional[torch.Generator] = None) -> Tensor:
        """``resample_level`` on codes (from ``encode``): the code with one group re-drawn, the rest held."""
        n = code.shape[0]
        name = self._group_name(level)
        shape = self.group_shape(level, n)
        if noise is None:
            noise = torch.randn(shape, generator=generator, device=generator.device if generator else self.device)
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise must have shape {list(shape)}, got {list(noise.shape)}")
        held = self.latents.unflatten(code.to(self.device, torch.float32))
        held[name] = None  # re-drawn given its (held) parent; its children are held
        new = self.latents.sample(n, temperature, fixed=held, noise={name: noise.to(self.device, torch.float32)}, device=self.device)
        return self.latents.flatten(new)

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
    def score(self, x: Tensor, k: int = 1, split: Optional[bool] = None, reference=None, iw: int = 0) -> dict[str, Tensor]:
        """Per-image anomaly scores in bits/dim, higher = more anomalous: 'bpd' (negative ELBO, k draws),
        'global_bpd' / 'local_bpd' (hybrid: KL of the code / the rest), 'complexity_bpd' (PNG code
        length), 'ic_bpd' (bpd - complexity_bpd, Serra et al. 2020) and, with a ``reference`` model
        (a local background flow), 'reference_bpd' and 'lr_bpd' (bpd - reference_bpd); with ``iw`` > 1,
        'iw_bpd' (the importance-weighted bound over ``iw`` draws). See uses/score.py."""
        return _score.score_images(self, x, k=k, split=split, reference=reference, iw=iw)

    def inpaint(self, x: Tensor, mask: Tensor, samples: int = 0, steps: int = 200, **kw) -> dict[str, Tensor]:
        """Fill the pixels where the bool ``mask`` is True: {'map': uint8 [N, C, H, W], 'samples':
        uint8 [S, N, C, H, W]}; unmasked pixels are bit-exact copies of x. See uses/restore.py."""
        return _restore.inpaint(self, x, mask, samples=samples, steps=steps, **kw)

    def denoise(self, x_noisy: Tensor, sigma: Optional[float] = None, salt_pepper: bool = False,
                steps: int = 200, **kw) -> Tensor:
        """Clean estimate (uint8) of Gaussian-noised (std ``sigma``, pixel values) or salt-and-pepper images."""
        return _restore.denoise(self, x_noisy, sigma=sigma, salt_pepper=salt_pepper, steps=steps, **kw)

    def extra_repr(self) -> str:
        return f"type={self.cfg.type}, image_shape={self.image_shape}, n_bits={self.n_bits}"

    def config_dict(self) -> dict:
        return asdict(self.cfg)
