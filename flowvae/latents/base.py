"""The latents interface: a named code built from latent groups, each owning its posterior and prior.

A *code* is a dict ``{group name: tensor [N, *shape]}`` in layout order (``"global"`` first, then
``"level0"`` (finest) ... ``"level{L-1}"``). Every group is one module (VDVAE style) that owns

- its posterior head ``q(group | x)`` = N(mu, sigma) from the encoder's features,
- its prior (standard normal, a learned flow, or top-down given its ``parent`` group),
- its role in conditioning the Glow: ``"vector"`` (the global code: every coupling and prior) or
  ``"map"`` (a spatial latent for the couplings and prior of its own level).

``Latents`` (the structure: none, global, hierarchical) holds the encoder trunk and the groups, and
does everything the model needs by looping over them: posterior, draw, KL per group, log q / log p
for the importance-weighted bound, ancestral sampling, and the conditioning each Glow level gets.
Public methods of the model take and return the code flattened to ``[N, dim]`` (``flatten`` /
``unflatten``), so a code is one tensor to users and importance sampling.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from ..config import NO_PRIOR_FLOOR
from ..gaussian import normal_kl, normal_log_prob

Code = dict  # {group name: Tensor [N, *shape]}
Posterior = dict  # {group name: (mu, log_sigma)}, float32, each [N, *shape]

LOG_SIGMA_RANGE = (NO_PRIOR_FLOOR, 5.0)


class LatentGroup(nn.Module):
    """One latent group. Subclasses set ``shape``, ``role``, ``parent`` and ``level`` and implement
    ``posterior`` and ``prior_params`` (a diagonal Gaussian given the parent), or override ``kl`` /
    ``log_prior`` / ``sample`` for a non-Gaussian prior."""

    shape: tuple[int, ...]
    role: str = "vector"            # "vector" (conditions every level) | "map" (conditions level ``level``)
    parent: Optional[str] = None    # the group p(this | parent) reads; drawn first
    level: Optional[int] = None
    analytic_kl: bool = True        # False: the KL is a one-sample Monte-Carlo estimate (no per-dim KL)

    @property
    def size(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    def posterior(self, feats: dict[int, Tensor]) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def prior_params(self, parent: Optional[Tensor], n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def kl(self, mu: Tensor, log_sigma: Tensor, sample: Tensor, parent: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
        """(KL per image [N], KL per dimension [N, size] or None), in nats. With a parent the KL is the
        analytic Gaussian KL given the drawn parent: a valid one-sample estimate of E_q[KL]."""
        mp, lp = self.prior_params(parent, mu.shape[0], mu.device)
        per_dim = normal_kl(mu, log_sigma, mp, lp).flatten(1)
        return per_dim.sum(1), per_dim

    def log_prior(self, sample: Tensor, parent: Optional[Tensor]) -> Tensor:
        mp, lp = self.prior_params(parent, sample.shape[0], sample.device)
        return normal_log_prob(sample, mp, lp)

    def sample(self, n: int, parent: Optional[Tensor], temperature: float, noise: Tensor) -> Tensor:
        mp, lp = self.prior_params(parent, n, noise.device)
        return mp + torch.exp(lp) * temperature * noise

    def given_parent(self, mu: Tensor, log_sigma: Tensor, parent: Optional[Tensor]) -> tuple[Tensor, Tensor]:
        """q(this | x, parent) from what ``posterior`` returned: the same (mu, log_sigma) for a group whose
        posterior reads x alone (the default)."""
        return mu, log_sigma


class StandardNormalKL:
    """Mixin for groups whose prior is N(0, I): the KL per dimension needs no prior network."""

    def kl(self, mu, log_sigma, sample, parent):
        per_dim = normal_kl(mu, log_sigma).flatten(1)
        return per_dim.sum(1), per_dim


class Latents(nn.Module):
    """A latent structure: the encoder trunk plus an ordered set of groups. Subclasses only build them
    (``NoLatents``, ``GlobalLatents``, ``HierarchicalLatents``); adding a structure is one such class."""

    kind = "none"

    @staticmethod
    def condition_shapes(cfg) -> tuple[int, Optional[list]]:
        """What this structure will hand the Glow, before it is built: (vector code size, channels of the
        spatial map per level or None). The model builds the Glow from it."""
        return 0, None

    def __init__(self, encoder: Optional[nn.Module], groups: dict):
        super().__init__()
        self.encoder = encoder
        self.groups = nn.ModuleDict(groups)
        names = list(self.groups)
        for name, g in self.groups.items():
            if g.parent is not None and g.parent not in names:
                raise ValueError(f"latent group {name!r} names an unknown parent {g.parent!r}")
        self.order = self._ancestral(names)

    def _ancestral(self, names: list) -> list:
        """Parents before children (the order of ancestral sampling)."""
        order: list = []
        while len(order) < len(names):
            ready = [n for n in names if n not in order and (self.groups[n].parent is None or self.groups[n].parent in order)]
            if not ready:
                raise ValueError("the latent groups' parents form a cycle")
            order += ready
        return order

    # ------------------------------------------------------------ layout
    def __bool__(self) -> bool:  # a structure with no groups (flow only) is falsy
        return len(self.groups) > 0

    @property
    def names(self) -> list:
        return list(self.groups)

    @property
    def dim(self) -> int:
        return sum(g.size for g in self.groups.values())

    def shapes(self) -> dict:
        return {name: tuple(g.shape) for name, g in self.groups.items()}

    def slices(self) -> dict:
        """Where each group lives in the flat code."""
        out, start = {}, 0
        for name, g in self.groups.items():
            out[name] = slice(start, start + g.size)
            start += g.size
        return out

    def flatten(self, code: Code) -> Tensor:
        return torch.cat([code[name].flatten(1) for name in self.groups], 1)

    def unflatten(self, flat: Tensor) -> Code:
        if flat.dim() != 2 or flat.shape[1] != self.dim:
            raise ValueError(f"a code must have shape [N, {self.dim}], got {list(flat.shape)}")
        return {name: flat[:, sl].reshape(flat.shape[0], *self.groups[name].shape) for name, sl in self.slices().items()}

    # ---------------------------------------------------------- the bound
    def posterior(self, x_centered: Tensor) -> Posterior:
        """(mu, log_sigma) of every group's q(group | x), float32."""
        if not self:
            return {}
        feats = self.encoder.features(x_centered)
        return {name: g.posterior(feats) for name, g in self.groups.items()}

    def draw(self, post: Posterior, deterministic: bool = False) -> tuple[Posterior, Code]:
        """One reparameterised draw from the posterior (its mean when ``deterministic``), parents first:
        (q of each group given its drawn parent, the code). For a group whose posterior reads x alone the
        first is ``post``'s own entry; a ladder group merges it with its prior given the drawn parent."""
        noise = {} if deterministic else {n: torch.randn_like(mu) for n, (mu, _) in post.items()}  # layout order
        given, code = {}, {}
        for name in (n for n in self.order if n in post):
            mu, ls = self.groups[name].given_parent(*post[name], self._parent(name, code))
            given[name] = (mu, ls)
            code[name] = mu if deterministic else mu + torch.exp(ls) * noise[name]
        return {n: given[n] for n in post}, {n: code[n] for n in post}  # layout order

    def _parent(self, name: str, code: Code) -> Optional[Tensor]:
        p = self.groups[name].parent
        return code[p] if p is not None else None

    def kl(self, post: Posterior, code: Code) -> dict:
        """Per group: (KL per image [N], KL per dimension [N, size] or None), in nats. ``post`` is q given
        the drawn parents (the first thing ``draw`` returns)."""
        return {name: g.kl(*post[name], code[name], self._parent(name, code)) for name, g in self.groups.items()}

    @staticmethod
    def log_q(post: Posterior, code: Code) -> Optional[Tensor]:
        """log q(code | x) [N] (the importance weights' denominator); ``post`` as for ``kl``."""
        terms = [normal_log_prob(code[n], mu, ls) for n, (mu, ls) in post.items()]
        return sum(terms) if terms else None

    def log_p(self, code: Code) -> Optional[Tensor]:
        """log p(code) [N] under the (hierarchical) prior."""
        terms = [g.log_prior(code[n], self._parent(n, code)) for n, g in self.groups.items()]
        return sum(terms) if terms else None

    def sample(self, n: int, temperature: float = 1.0, fixed: Optional[Code] = None, noise: Optional[dict] = None,
               device: Optional[torch.device] = None, generator: Optional[torch.Generator] = None) -> Code:
        """Ancestral draw, parents first. ``fixed[name]`` is kept as it is; ``noise[name]`` replaces the
        standard-normal draw of that group (its prior's mean and scale are applied to it)."""
        fixed, noise = fixed or {}, noise or {}
        code: Code = {}
        for name in self.order:
            if fixed.get(name) is not None:
                code[name] = fixed[name].float()
                continue
            g = self.groups[name]
            e = noise.get(name)
            if e is None:
                e = torch.randn(n, *g.shape, device=device, generator=generator)
            code[name] = g.sample(n, self._parent(name, code), temperature, e.float())
        return {name: code[name] for name in self.groups}  # layout order

    # ------------------------------------------------------- conditioning
    def conditioning(self, code: Optional[Code]) -> tuple[Optional[Tensor], Optional[list]]:
        """What the Glow reads: the vector code (every level) and one spatial map per level (or None)."""
        if not code:
            return None, None
        vec = [code[n] for n, g in self.groups.items() if g.role == "vector"]
        maps = {g.level: code[n] for n, g in self.groups.items() if g.role == "map"}
        return (vec[0] if vec else None), ([maps[lvl] for lvl in sorted(maps)] if maps else None)


class NoLatents(Latents):
    """The flow-only Glow: no encoder, no code."""

    kind = "none"

    def __init__(self, cfg=None, image_shape=None, level_shapes=None):
        super().__init__(None, {})
