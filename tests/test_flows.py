"""Every invertible layer checked the same way, in float64 on tiny shapes, with ALL parameters
randomised (fresh couplings and priors are the identity, which would make these checks vacuous):
round trip both ways, log-dets that cancel and match a brute-force Jacobian, conditioning that
matters, log-det shape and dtype. Then layer-specific checks (InvConv1x1 cache, ActNorm init)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import pytest
import torch
from torch import nn

from flowvae.dequantization import VariationalDequantizer
from flowvae.flows import (ActNorm, AffineCoupling, Cond, ConditionalGlow, FlowStep, GaussianizeSplit,
                           GaussianizeTop, InvConv1x1, Squeeze, data_dependent_init, standard_normal_logprob)
from flowvae.flows.squeeze import squeeze2x2, unsqueeze2x2

pytestmark = pytest.mark.usefixtures("single_thread")

N, DV, CM = 2, 3, 2  # batch, global code dim, spatial code channels


@dataclass
class Case:
    build: Callable[[], nn.Module]
    shape: tuple            # (C, H, W) of one input
    vec: bool = False       # uses cond.vec (z)
    map: Optional[list] = None  # channels of cond.map: [Cm] for a layer, one per level for a Glow
    glow: bool = False
    std: float = 0.3        # parameter noise; smaller for deep stacks so they stay well-conditioned
    zmap: int = 0           # channels of cond.zmap (a layer's map decoded from z; a Glow decodes its own)

    def cond(self, n: int, seed: int, dtype=torch.float64, vary: str = "") -> Cond:
        g = torch.Generator().manual_seed(seed)
        vec = torch.randn(n, DV, generator=g, dtype=dtype) if self.vec else None
        zmap = torch.randn(n, self.zmap, *self.shape[1:], generator=g, dtype=dtype) if self.zmap else None
        maps = None
        if self.map is not None:
            _, h, w = self.shape
            if self.glow:  # level l acts at H / 2^(l+1)
                maps = [torch.randn(n, c, h >> (l + 1), w >> (l + 1), generator=g, dtype=dtype) for l, c in enumerate(self.map)]
            else:
                maps = torch.randn(n, self.map[0], h, w, generator=g, dtype=dtype)
        if vary == "vec":
            vec = vec + 1.0
        elif vary == "map":
            maps = [m + 1.0 for m in maps] if self.glow else maps + 1.0
        elif vary == "zmap":
            zmap = zmap + 1.0
        return Cond(vec, maps, zmap)


def sub_cond(cond: Cond, i: int) -> Cond:
    take = lambda t: None if t is None else ([m[i:i + 1] for m in t] if isinstance(t, list) else t[i:i + 1])
    return Cond(take(cond.vec), take(cond.map), take(cond.zmap))


def fwd(case: Case, layer, x, cond):
    return layer(x, cond.vec, cond.map) if case.glow else layer(x, cond)


def inv(case: Case, layer, y, cond):
    return layer.inverse(y, cond.vec, cond.map) if case.glow else layer.inverse(y, cond)


CASES = {
    "actnorm": Case(lambda: ActNorm(4), (4, 4, 4)),
    "invconv": Case(lambda: InvConv1x1(4), (4, 4, 4)),
    "coupling": Case(lambda: AffineCoupling(4, 8), (4, 4, 4)),
    "coupling_odd_channels": Case(lambda: AffineCoupling(5, 8), (5, 4, 4)),
    "coupling_vec": Case(lambda: AffineCoupling(4, 8, cond_dim=DV), (4, 4, 4), vec=True),
    "coupling_map": Case(lambda: AffineCoupling(4, 8, cond_map_channels=CM), (4, 4, 4), map=[CM]),
    "coupling_vec_map": Case(lambda: AffineCoupling(4, 8, DV, CM), (4, 4, 4), vec=True, map=[CM]),
    # a soft-bounded shift, small enough that the randomised networks drive it into tanh's curved part
    "coupling_shift_clamp": Case(lambda: AffineCoupling(4, 8, DV, shift_clamp=0.3), (4, 4, 4), vec=True),
    # Glow's sigmoid scale (model.coupling_scale=sigmoid): log_s in (-clamp, 0), a non-expanding coupling
    "coupling_sigmoid_scale": Case(lambda: AffineCoupling(4, 8, DV, shift_clamp=0.3, scale="sigmoid"), (4, 4, 4),
                                   vec=True),
    "split": Case(lambda: GaussianizeSplit(4), (4, 4, 4)),
    "split_vec": Case(lambda: GaussianizeSplit(4, cond_dim=DV), (4, 4, 4), vec=True),
    "split_vec_map": Case(lambda: GaussianizeSplit(4, DV, CM), (4, 4, 4), vec=True, map=[CM]),
    # model.split_prior=code: the split half's mean and scale from the codes alone, not the kept half
    "split_codes_only": Case(lambda: GaussianizeSplit(4, DV, CM, read_kept=False), (4, 4, 4), vec=True, map=[CM]),
    "top": Case(lambda: GaussianizeTop((4, 4, 4)), (4, 4, 4)),
    "top_vec": Case(lambda: GaussianizeTop((4, 4, 4), cond_dim=DV), (4, 4, 4), vec=True),
    "top_vec_map": Case(lambda: GaussianizeTop((4, 4, 4), DV, CM), (4, 4, 4), vec=True, map=[CM]),
    "squeeze": Case(lambda: Squeeze(), (4, 4, 4)),
    "flowstep": Case(lambda: FlowStep(4, 8), (4, 4, 4)),
    "flowstep_vec_map": Case(lambda: FlowStep(4, 8, DV, CM), (4, 4, 4), vec=True, map=[CM]),
    "glow_1level": Case(lambda: ConditionalGlow((2, 4, 4), levels=1, steps=1, hidden=8), (2, 4, 4), glow=True, std=0.1),
    "glow_2levels_z": Case(lambda: ConditionalGlow((1, 8, 8), levels=2, steps=2, hidden=8, cond_dim=DV),
                           (1, 8, 8), vec=True, glow=True, std=0.1),
    "glow_2levels_z_maps": Case(lambda: ConditionalGlow((1, 8, 8), 2, 1, 8, cond_dim=DV, cond_map_channels=[CM, 1]),
                                (1, 8, 8), vec=True, map=[CM, 1], glow=True, std=0.1),
    # z decoded to a spatial map per level, per-pixel bias in the couplings; kernel 1 and 3 couplings
    "coupling_zmap": Case(lambda: AffineCoupling(4, 8, DV, zmap_channels=CM), (4, 4, 4), vec=True, zmap=CM),
    "coupling_kernel1_zmap": Case(lambda: AffineCoupling(4, 8, DV, zmap_channels=CM, kernel=1), (4, 4, 4), vec=True, zmap=CM),
    "split_zmap_kernel1": Case(lambda: GaussianizeSplit(4, DV, 0, CM, kernel=1), (4, 4, 4), vec=True, zmap=CM),
    "top_zmap_map": Case(lambda: GaussianizeTop((4, 4, 4), DV, CM, CM), (4, 4, 4), vec=True, map=[CM], zmap=CM),
    "glow_zmap_kernels_steps": Case(lambda: ConditionalGlow((1, 8, 8), 2, [2, 1], 8, cond_dim=DV, zmap_channels=2,
                                                            kernels=[3, 1]), (1, 8, 8), vec=True, glow=True, std=0.1),
    "glow_shift_clamp": Case(lambda: ConditionalGlow((1, 8, 8), 2, 2, 8, cond_dim=DV, shift_clamp=0.3),
                             (1, 8, 8), vec=True, glow=True, std=0.1),
    "glow_sigmoid_scale": Case(lambda: ConditionalGlow((1, 8, 8), 2, 2, 8, cond_dim=DV, shift_clamp=0.3,
                                                       coupling_scale="sigmoid"), (1, 8, 8), vec=True, glow=True, std=0.1),
    "glow_split_codes_only": Case(lambda: ConditionalGlow((1, 8, 8), 2, 1, 8, cond_dim=DV, cond_map_channels=[CM, 1],
                                                          split_reads_kept=False), (1, 8, 8), vec=True, map=[CM, 1],
                                  glow=True, std=0.1),
    "glow_zmap_levelcodes": Case(lambda: ConditionalGlow((1, 8, 8), 2, 1, 8, cond_dim=DV, cond_map_channels=[CM, 1],
                                                         zmap_channels=2, kernels=[1, 1]),
                                 (1, 8, 8), vec=True, map=[CM, 1], glow=True, std=0.1),
}
CONDITIONED = [k for k, c in CASES.items() if c.vec or c.map or c.zmap]


def setup(name: str, dtype=torch.float64, seed: int = 0):
    case = CASES[name]
    torch.manual_seed(seed)
    layer = case.build().to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(dtype) * case.std)
    x = torch.randn(N, *case.shape, generator=g, dtype=torch.float64).to(dtype)
    return case, layer, x, case.cond(N, seed + 1, dtype)


@pytest.mark.parametrize("name", CASES)
def test_round_trip_and_logdets_cancel(name):
    case, layer, x, cond = setup(name)
    y, ld_f = fwd(case, layer, x, cond)
    x_back, ld_i = inv(case, layer, y, cond)
    assert torch.allclose(x_back, x, atol=1e-10, rtol=0)
    assert torch.allclose(ld_f + ld_i, torch.zeros_like(ld_f), atol=1e-10)
    # and the other way round, starting from the latent side
    e = torch.randn_like(y)
    e_back, _ = fwd(case, layer, inv(case, layer, e, cond)[0], cond)
    assert torch.allclose(e_back, e, atol=1e-10, rtol=0)
    # not vacuous: the randomised layer is not the identity (squeeze at least permutes)
    assert (y.flatten(1) - x.flatten(1)).abs().max() > 1e-2
    if name != "squeeze":
        assert ld_f.abs().max() > 1e-3


@pytest.mark.parametrize("name", CASES)
def test_logdet_matches_brute_force_jacobian(name):
    case, layer, x, cond = setup(name)
    y, ld_f = fwd(case, layer, x, cond)
    _, ld_i = inv(case, layer, y, cond)
    for i in range(N):
        ci = sub_cond(cond, i)
        for fn, point, ld in ((fwd, x[i:i + 1], ld_f[i]), (inv, y[i:i + 1], ld_i[i])):
            jac = torch.autograd.functional.jacobian(
                lambda v: fn(case, layer, v.view_as(point), ci)[0].reshape(-1), point.reshape(-1))
            sign, logabs = torch.linalg.slogdet(jac)
            assert sign != 0
            assert torch.allclose(logabs, ld, atol=1e-8, rtol=0), (fn.__name__, i, logabs.item(), ld.item())


@pytest.mark.parametrize("name", CONDITIONED)
def test_conditioning_changes_the_output(name):
    case, layer, x, cond = setup(name)
    y, ld = fwd(case, layer, x, cond)
    for part in [p for p, used in (("vec", case.vec), ("map", case.map), ("zmap", case.zmap)) if used]:
        other = case.cond(N, 1, vary=part)  # same seed as `cond`, one component shifted
        y2, ld2 = fwd(case, layer, x, other)
        assert (y2 - y).abs().max() > 1e-3, f"cond.{part} has no effect"
        assert (ld2 - ld).abs().max() > 1e-6, f"cond.{part} does not change the log-det"
        # inverting with the wrong conditioning does not give x back
        assert (inv(case, layer, y, other)[0] - x).abs().max() > 1e-3


@pytest.mark.parametrize("name", [k for k in CASES if k not in CONDITIONED and not CASES[k].glow])
def test_unconditioned_layers_ignore_cond(name):
    case, layer, x, _ = setup(name)
    y0, ld0 = layer(x)
    y1, ld1 = layer(x, Cond(torch.randn(N, DV, dtype=torch.float64), torch.randn(N, CM, 4, 4, dtype=torch.float64)))
    assert torch.equal(y0, y1) and torch.equal(ld0, ld1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("name", CASES)
def test_logdet_shape_and_dtype(name, dtype):
    case, layer, x, cond = setup(name, dtype)
    y, ld = fwd(case, layer, x, cond)
    assert y.dtype == dtype and ld.dtype == dtype and ld.shape == (N,)
    x_back, ld_i = inv(case, layer, y, cond)
    assert x_back.dtype == dtype and ld_i.dtype == dtype and ld_i.shape == (N,)
    if dtype == torch.float32:
        assert torch.allclose(x_back, x, atol=1e-4)


def test_coupling_missing_cond_raises():
    layer = AffineCoupling(4, 8, cond_dim=DV, cond_map_channels=CM)
    x = torch.randn(N, 4, 4, 4)
    with pytest.raises(ValueError, match="cond.map"):
        layer(x)
    with pytest.raises(ValueError, match="cond.vec"):
        layer(x, Cond(map=torch.randn(N, CM, 4, 4)))


def _big_coupling(shift_clamp: float, scale: str = "tanh") -> AffineCoupling:
    """A coupling whose network outputs large shifts (weights of scale 3 on a width-8 net)."""
    torch.manual_seed(0)
    layer = AffineCoupling(4, 8, DV, shift_clamp=shift_clamp, scale=scale).double()
    with torch.no_grad():
        for p in layer.parameters():
            p.copy_(torch.randn_like(p) * 3.0)
    return layer


def test_shift_clamp_bounds_the_coupling_output():
    x = torch.randn(N, 4, 4, 4, dtype=torch.float64) * 5
    cond = Cond(vec=torch.randn(N, DV, dtype=torch.float64))
    b = 1.5
    free, bounded = _big_coupling(0.0), _big_coupling(b)
    bounded.load_state_dict(free.state_dict())
    y_free, ld_free = free(x, cond)
    y, ld = bounded(x, cond)
    xb = x[:, 2:]
    limit = (xb.abs() + b) * torch.exp(torch.tensor(bounded.clamp, dtype=torch.float64))
    assert (y[:, 2:].abs() <= limit).all()
    assert (y_free[:, 2:].abs() > limit).any()  # without the clamp these weights break the bound
    assert torch.equal(ld, ld_free)  # the shift has no log-det: the scales are untouched
    assert torch.equal(y[:, :2], x[:, :2])


def test_sigmoid_scale_never_expands_the_coupling_input():
    """With Glow's sigmoid scale and a shift bound b, |yb| <= |xb| + b for any weights: the same large
    weights break that bound under the symmetric tanh log-scale (which may multiply by up to e^clamp)."""
    x = torch.randn(N, 4, 4, 4, dtype=torch.float64) * 5
    cond = Cond(vec=torch.randn(N, DV, dtype=torch.float64))
    b = 1.5
    sym, sig = _big_coupling(b), _big_coupling(b, "sigmoid")
    sig.load_state_dict(sym.state_dict())
    xb = x[:, 2:]
    (y_sym, ld_sym), (y, ld) = sym(x, cond), sig(x, cond)
    assert (y[:, 2:].abs() <= xb.abs() + b).all()
    assert (y_sym[:, 2:].abs() > xb.abs() + b).any()
    assert (ld < 0).all() and (ld > -sig.clamp * xb[0].numel()).all()  # each log-scale in (-clamp, 0)
    assert (ld_sym > 0).any()
    assert torch.allclose(sig.inverse(y, cond)[0], x, atol=1e-10)


def test_sigmoid_scale_rejects_unknown_names():
    with pytest.raises(ValueError, match="scale"):
        AffineCoupling(4, 8, scale="exp")


def test_shift_clamp_is_near_identity_for_small_shifts():
    # A soft bound far above the shifts a network makes leaves the coupling almost unchanged.
    torch.manual_seed(1)
    free = AffineCoupling(4, 8, DV).double()
    with torch.no_grad():
        for p in free.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    wide = AffineCoupling(4, 8, DV, shift_clamp=100.0).double()
    wide.load_state_dict(free.state_dict())
    x = torch.randn(N, 4, 4, 4, dtype=torch.float64)
    cond = Cond(vec=torch.randn(N, DV, dtype=torch.float64))
    y0, y1 = free(x, cond)[0], wide(x, cond)[0]
    assert (y0 - x).abs().max() > 1e-3
    assert torch.allclose(y0, y1, atol=1e-5, rtol=0)


def test_shift_clamp_rejects_negative_values():
    with pytest.raises(ValueError, match="shift_clamp"):
        AffineCoupling(4, 8, shift_clamp=-1.0)


def test_split_prior_on_the_codes_alone_ignores_the_kept_half():
    """With read_kept=False the standardised split half depends on the codes only: changing the kept half
    leaves it unchanged, while the default layer's (same weights, plus kept-half inputs) changes."""
    case, layer, x, cond = setup("split_codes_only")
    moved = x.clone()
    moved[:, : layer.ck] += torch.randn_like(moved[:, : layer.ck])
    (y, ld), (y2, ld2) = layer(x, cond), layer(moved, cond)
    assert torch.equal(y[:, layer.ck:], y2[:, layer.ck:]) and torch.equal(ld, ld2)
    reads = GaussianizeSplit(4, DV, CM).to(torch.float64)
    with torch.no_grad():
        for p in reads.parameters():
            p.normal_(0, 1)
    assert not torch.allclose(reads(x, cond)[0][:, reads.ck:], reads(moved, cond)[0][:, reads.ck:])


def test_split_prior_on_the_codes_alone_needs_a_spatial_code():
    with pytest.raises(ValueError, match="spatial code"):
        GaussianizeSplit(4, cond_dim=DV, read_kept=False)


def test_glow_log_prob_and_shapes():
    case, glow, x, cond = setup("glow_2levels_z")
    lp, eps = glow.log_prob(x, cond.vec)
    _, ld = glow(x, cond.vec)
    ref = torch.distributions.Normal(0.0, 1.0).log_prob(eps).flatten(1).sum(1) + ld
    assert eps.shape == x.shape and torch.allclose(lp, ref, atol=1e-10)
    assert torch.allclose(standard_normal_logprob(eps), torch.distributions.Normal(0.0, 1.0).log_prob(eps).flatten(1).sum(1))
    with pytest.raises(ValueError, match="eps must have shape"):
        glow.inverse(torch.randn(N, 1, 4, 16, dtype=torch.float64), cond.vec)
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels"):
        ConditionalGlow((1, 12, 12), levels=3, steps=1, hidden=8)
    with pytest.raises(ValueError, match="one entry per level"):
        ConditionalGlow((1, 8, 8), levels=2, steps=1, hidden=8, cond_map_channels=[1])


def test_glow_eps_packs_every_level():
    """eps holds the split-off latents of every level and the top: each part changes the decoded y,
    and pack/unpack are inverse (decoding reuses the split-off latents instead of resampling them)."""
    _, glow, x, cond = setup("glow_2levels_z")
    eps, _ = glow(x, cond.vec)
    top, parts = glow._unpack(eps)
    assert top.shape == (N, 8, 2, 2) and parts[0].shape == (N, 2, 4, 4)
    assert torch.equal(glow._pack(top, parts), eps)
    for changed in (glow._pack(top + 0.5, parts), glow._pack(top, [parts[0] + 0.5])):
        assert (changed - eps).abs().min() == 0  # only one level's part of eps moved
        assert (glow.inverse(changed, cond.vec)[0] - x).abs().max() > 1e-2


# ------------------------------------------------------------------------------ InvConv1x1
def test_invconv_inverse_weight():
    layer = InvConv1x1(6)
    with torch.no_grad():
        layer.log_s.add_(0.5)  # not a rotation any more
        layer.upper.add_(0.3)
    eye = torch.eye(6, dtype=torch.float64)
    assert layer.inverse_weight().dtype == torch.float64
    assert torch.allclose(layer.inverse_weight() @ layer.weight(torch.float64), eye, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(layer.inverse_weight() @ layer.weight(torch.float64), eye, atol=1e-12)
        assert layer.inverse_weight() is layer.inverse_weight()  # cached while nothing changes
    assert abs(torch.linalg.slogdet(layer.weight(torch.float64))[1].item() - layer.log_s.sum().item()) < 1e-6


def test_invconv_cache_recomputed_after_optimizer_step():
    layer = InvConv1x1(4)
    x = torch.randn(8, 4, 3, 3)
    eye = torch.eye(4, dtype=torch.float64)
    with torch.no_grad():
        stale = layer.inverse_weight().clone()
    opt = torch.optim.SGD(layer.parameters(), lr=0.05)
    for _ in range(2):
        opt.zero_grad()
        y, ld = layer(x)
        ((y - 1.0).pow(2).mean() - ld.mean() / 36).backward()
        opt.step()
        with torch.no_grad():
            w_inv = layer.inverse_weight()
            assert not torch.allclose(w_inv, stale)
            assert torch.allclose(w_inv @ layer.weight(torch.float64), eye, atol=1e-10)
            x_back, _ = layer.inverse(layer(x)[0])
            assert torch.allclose(x_back, x, atol=1e-5)
            stale = w_inv.clone()
    # load_state_dict (how EMA weights and checkpoints arrive) also refreshes the cache
    other = InvConv1x1(4)
    with torch.no_grad():
        layer.load_state_dict(other.state_dict())
        assert torch.allclose(layer.inverse_weight() @ other.weight(torch.float64), eye, atol=1e-10)


def test_invconv_cache_recomputed_after_data_update():
    # Regression: a cache keyed on the parameters' `_version` counters missed writes through `.data`
    # (p.data.add_/copy_, EMA code writing p.data, torch.nn.utils.vector_to_parameters), which have
    # their own version counter, so no_grad inverses (decode, sample) used a stale weight.
    layer = InvConv1x1(4)
    eye = torch.eye(4, dtype=torch.float64)
    with torch.no_grad():
        layer.inverse_weight()  # fill the cache
        layer.lower.data.add_(0.5)
        assert torch.allclose(layer.inverse_weight() @ layer.weight(torch.float64), eye, atol=1e-10)
        torch.nn.utils.vector_to_parameters(torch.nn.utils.parameters_to_vector(layer.parameters()) + 0.1,
                                            layer.parameters())
        assert torch.allclose(layer.inverse_weight() @ layer.weight(torch.float64), eye, atol=1e-10)


# ------------------------------------------------------------------------- ActNorm init
def _data(n=64, c=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    scale = torch.tensor([0.1, 1.0, 3.0, 10.0])[:c].view(1, c, 1, 1)
    shift = torch.tensor([-5.0, 0.0, 2.0, 7.0])[:c].view(1, c, 1, 1)
    return torch.randn(n, c, 4, 4, generator=g) * scale + shift


def _channel_stats(y):
    yf = y.transpose(0, 1).flatten(1)
    return yf.mean(1), yf.std(1, unbiased=False)


def test_data_dependent_init_standardises_and_only_once():
    an = ActNorm(4)
    x = _data()
    assert not an.initialized
    with data_dependent_init(an):
        y, ld = an(x)
        an(_data(seed=1) * 3)  # a second pass inside the context must not re-initialise
    assert an.initialized
    mean, std = _channel_stats(y)
    assert torch.allclose(mean, torch.zeros(4), atol=1e-4) and torch.allclose(std, torch.ones(4), atol=1e-4)
    y_again, ld_again = an(x)
    assert torch.allclose(y_again, y, atol=1e-6)
    # log-det of the fitted scale: -H*W*sum(log std)
    assert torch.allclose(ld, (-16 * torch.log(x.transpose(0, 1).flatten(1).std(1, unbiased=False)).sum()).expand(64), rtol=1e-4)


def test_forward_outside_context_does_not_change_params():
    an = ActNorm(4)
    before = [p.clone() for p in an.parameters()]
    an(_data())
    assert all(torch.equal(a, b) for a, b in zip(before, an.parameters()))
    assert not an.initialized
    with data_dependent_init(an):
        an(_data())
    fitted = [p.clone() for p in an.parameters()]
    assert not torch.equal(fitted[0], before[0])
    an(_data(seed=2) * 5 + 1)
    assert all(torch.equal(a, b) for a, b in zip(fitted, an.parameters()))


def test_data_dependent_init_through_a_flow_step():
    step = FlowStep(4, 8)
    x = _data()
    with data_dependent_init(step):
        step(x)
    mean, std = _channel_stats(step.layers[0](x)[0])
    assert torch.allclose(mean, torch.zeros(4), atol=1e-4) and torch.allclose(std, torch.ones(4), atol=1e-4)


def test_data_dependent_init_raises_if_actnorm_not_reached():
    layers = nn.ModuleList([ActNorm(4), ActNorm(4)])
    with pytest.raises(RuntimeError, match="1 ActNorm layers were not reached"):
        with data_dependent_init(layers):
            layers[0](_data())
    before = layers[1].bias.clone()
    layers[1](_data())  # the pending flag was cleared: no late initialisation
    assert torch.equal(before, layers[1].bias) and not layers[1].initialized
    with pytest.raises(RuntimeError, match="not reached"):
        with data_dependent_init(ActNorm(2)):
            pass


# -------------------------------------------------------------- variational dequantizer
def test_variational_dequantizer_density_matches_jacobian():
    dq = VariationalDequantizer(channels=1, layers=2, hidden=8).double()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in dq.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    x = (torch.randint(0, 256, (2, 1, 4, 4), generator=g).double() + 0.5) / 256 - 0.5
    torch.manual_seed(5)
    u, log_q = dq(x)
    torch.manual_seed(5)
    e = torch.randn_like(squeeze2x2(x))  # the same base draw as inside dq
    ctx = dq.context_net(squeeze2x2(x))
    assert u.shape == x.shape and ((u > 0) & (u < 1)).all() and log_q.dtype == torch.float64

    def g_map(v, i):
        for f in dq.flows:
            v, _ = f(v, Cond(map=ctx[i:i + 1]))
        return torch.sigmoid(unsqueeze2x2(v))

    for i in range(2):
        ei = e[i:i + 1]
        assert torch.allclose(g_map(ei, i), u[i:i + 1], atol=1e-12)
        jac = torch.autograd.functional.jacobian(lambda v: g_map(v.view_as(ei), i).reshape(-1), ei.reshape(-1))
        ref = standard_normal_logprob(ei)[0] - torch.linalg.slogdet(jac)[1]
        assert torch.allclose(log_q[i], ref, atol=1e-8)
    u0, lq0 = dq(x, deterministic=True)
    assert torch.equal(u0, torch.full_like(x, 0.5)) and torch.equal(lq0, torch.zeros(2))


# ------------------------------------------------ the coupling network's GEMM path (bench speed-up)
def _reference_coupling_net(net, x, cond):
    """The coupling network written with F.conv2d and autograd's ReLU: what the matmul / fold path and
    its hand-written backward must equal."""
    if cond is not None and cond.map is not None:
        x = torch.cat([x, cond.map], 1)
    pad = net.kernel // 2
    h = nn.functional.conv2d(x, net.conv1.weight, net.conv1.bias, padding=pad)
    if net.cond_proj is not None:
        h = h + net.cond_proj(cond.vec)[:, :, None, None]
    if net.zmap_proj is not None:
        h = h + nn.functional.conv2d(cond.zmap, net.zmap_proj.weight)
    h = nn.functional.conv2d(torch.relu(h), net.conv2.weight, net.conv2.bias).relu()
    return nn.functional.conv2d(h, net.out.weight, net.out.bias, padding=pad)


@pytest.mark.parametrize("vec, cmap, zmap, kernel", [(False, 0, 0, 3), (True, 0, 0, 3), (True, CM, 0, 3),
                                                     (True, 0, CM, 3), (False, CM, CM, 1), (True, 0, 0, 1)])
def test_coupling_net_matches_conv2d_values_and_gradients(vec, cmap, zmap, kernel):
    from flowvae.flows.coupling import CouplingNet

    torch.manual_seed(0)
    net = CouplingNet(3, 6, 8, cond_dim=DV if vec else 0, cond_map_channels=cmap, zmap_channels=zmap, kernel=kernel).double()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.5)
    x = torch.randn(2, 3, 5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    cond = Cond(torch.randn(2, DV, generator=g, dtype=torch.float64, requires_grad=True) if vec else None,
                torch.randn(2, cmap, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) if cmap else None,
                torch.randn(2, zmap, 5, 4, generator=g, dtype=torch.float64, requires_grad=True) if zmap else None)
    inputs = [x] + [t for t in cond if t is not None] + list(net.parameters())
    got, ref = net(x, cond), _reference_coupling_net(net, x, cond)
    assert torch.allclose(got, ref, atol=1e-12, rtol=0)
    w = torch.randn(got.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((got * w).sum(), inputs)
    ref_grads = torch.autograd.grad((ref * w).sum(), inputs)
    for a, b in zip(grads, ref_grads):
        assert torch.allclose(a, b, atol=1e-10, rtol=0)
    assert all(gr.abs().max() > 0 for gr in grads)  # every input and parameter gets a gradient


def test_squeeze_is_torchs_pixel_unshuffle():
    """The hand-written squeeze (kept for speed on CPU) is torch's pixel (un)shuffle, channel order included:
    checkpoints trained with either read the same."""
    x = torch.randn(2, 3, 6, 4)
    assert torch.equal(squeeze2x2(x), torch.nn.functional.pixel_unshuffle(x, 2))
    y = torch.randn(2, 12, 3, 2)
    assert torch.equal(unsqueeze2x2(y), torch.nn.functional.pixel_shuffle(y, 2))
