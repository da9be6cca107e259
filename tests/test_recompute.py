"""train.memory: reversible backprop (recompute) and per-step checkpointing give the gradients standard
backprop gives, in float64, for every flow layer, a whole conditional Glow and the hybrid model, the
conditioning inputs (z, the maps decoded from z, the level codes) included; and recompute keeps
no activation per step."""
from __future__ import annotations

import pytest
import torch

from conftest import TINY, randomize_
from flowvae import FlowVAE, load_config
from flowvae.flows import ActNorm, AffineCoupling, Cond, ConditionalGlow, InvConv1x1
from flowvae.flows.recompute import reversible

pytestmark = pytest.mark.usefixtures("single_thread")

# float64: the rebuilt activations differ from the stored ones by rounding only.
RTOL, ATOL = 1e-9, 1e-11


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=RTOL, atol=ATOL)


def _grads(fn, inputs):
    out = fn()
    return [torch.zeros_like(t) if g is None else g
            for g, t in zip(torch.autograd.grad(out, inputs, allow_unused=True), inputs)]


def _cond(n, h, w, vec, cmap, zmap, g):
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64, requires_grad=True)
    return Cond(make(n, 3) if vec else None, make(n, cmap, h, w) if cmap else None, make(n, zmap, h, w) if zmap else None)


LAYERS = {
    "actnorm": lambda: ActNorm(4),
    "invconv": lambda: InvConv1x1(4),
    "coupling": lambda: AffineCoupling(4, 8),
    "coupling_vec": lambda: AffineCoupling(4, 8, cond_dim=3),
    "coupling_vec_shift_clamp": lambda: AffineCoupling(4, 8, cond_dim=3, shift_clamp=0.3),
    "coupling_vec_map_zmap_k3": lambda: AffineCoupling(4, 8, cond_dim=3, cond_map_channels=2, zmap_channels=2),
    "coupling_vec_map_zmap_k1": lambda: AffineCoupling(4, 8, cond_dim=3, cond_map_channels=2, zmap_channels=2, kernel=1),
}


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_every_layer_reversible_gradients_match_standard(name):
    torch.manual_seed(0)
    stack = [randomize_(LAYERS[name]().double(), seed=i) for i in range(3)]  # three in a row: errors would compound
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 4, 6, 4, generator=g, dtype=torch.float64, requires_grad=True)
    net = stack[-1].net if hasattr(stack[-1], "net") else None
    cond = _cond(2, 6, 4, net is not None and net.cond_proj is not None, net.cond_map_channels if net else 0,
                 net.zmap_proj.in_channels if net is not None and net.zmap_proj is not None else 0, g)
    w = torch.randn(2, 4, 6, 4, generator=g, dtype=torch.float64)
    wl = torch.randn(2, generator=g, dtype=torch.float64)
    inputs = [x] + [t for t in cond if t is not None] + [p for m in stack for p in m.parameters()]

    def standard():
        y, total = x, 0
        for m in stack:
            y, ld = m(y, cond)
            total = total + ld
        return (y * w).sum() + (total * wl).sum()

    def recompute():
        y, ld = reversible(stack, x, cond)
        return (y * w).sum() + (ld * wl).sum()

    assert _close(standard(), recompute())
    ref, got = _grads(standard, inputs), _grads(recompute, inputs)
    for a, b in zip(ref, got):
        assert _close(a, b), (a - b).abs().max()
    assert all(r.abs().max() > 0 for r in ref)  # every input and parameter has a gradient to compare


def _glow():
    torch.manual_seed(0)
    glow = ConditionalGlow((1, 8, 8), levels=2, steps=[2, 3], hidden=8, cond_dim=3, cond_map_channels=[2, 2],
                           zmap_channels=2, kernels=[3, 1]).double()
    return randomize_(glow, std=0.2)


@pytest.mark.parametrize("memory", ["recompute", "checkpoint"])
def test_glow_gradients_match_standard_including_conditioning(memory):
    glow = _glow()
    g = torch.Generator().manual_seed(1)
    y = torch.rand(3, 1, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(3, 3, generator=g, dtype=torch.float64, requires_grad=True)
    maps = [torch.randn(3, 2, 4, 4, generator=g, dtype=torch.float64, requires_grad=True),
            torch.randn(3, 2, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)]
    inputs = [y, z, *maps, *glow.parameters()]

    def loss(mode):
        glow.set_memory(mode)
        log_p, _ = glow.log_prob(y, z, maps)
        return log_p.sum()

    assert _close(loss("standard"), loss(memory))
    ref, got = _grads(lambda: loss("standard"), inputs), _grads(lambda: loss(memory), inputs)
    assert all(r.abs().max() > 0 for r in ref[:4])  # y, z and both level codes reach the loss
    for i, (a, b) in enumerate(zip(ref, got)):
        assert _close(a, b), (i, (a - b).abs().max())


@pytest.mark.parametrize("memory", ["recompute", "checkpoint"])
def test_hybrid_gradients_match_standard(memory):
    """The hierarchical hybrid with z decoded to maps: the gradients of the code (z and every level's z_l),
    of every Glow parameter (the z-map decoder's included) and of the encoder."""
    torch.manual_seed(0)
    cfg = load_config(None, overrides=TINY + ["model.injection=hierarchical", "model.z_maps=2", "model.steps=2"]).model
    model = FlowVAE(cfg)
    randomize_(model.glow, std=0.2)
    x = torch.randint(0, 256, (4, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    model.initialize(x)
    model.double()
    g = torch.Generator().manual_seed(3)
    x_int = model._prepare(x).double()
    y = (x_int + torch.rand(x_int.shape, generator=g, dtype=torch.float64)) / 256 - 0.5
    e = torch.randn(4, model.code_dim, generator=g, dtype=torch.float64)
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())

    def grads(mode):
        model.glow.set_memory(mode)
        mu, log_sigma = model._posterior(x_int)  # the encoder's head hands out float32 (autocast safety)
        code = mu.double() + log_sigma.double().exp() * e
        z, levels = model.split_code(code)
        log_p, _ = model.glow.log_prob(y, z, levels)
        loss = log_p.sum() - 0.5 * (code ** 2).sum()
        out = torch.autograd.grad(loss, [code] + params, allow_unused=True)
        return [torch.zeros_like(t) if o is None else o for o, t in zip(out, [code] + params)]

    ref, got = grads("standard"), grads(memory)
    assert _close(ref[0], got[0])  # d loss / d code: z and the level codes, through every coupling
    assert ref[0].abs().min() > 0
    for name, a, b in zip(names, ref[1:], got[1:]):
        if name.startswith("glow."):
            assert _close(a, b), name
        else:  # behind the encoder's float32 head: float32 rounding
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
    enc = [a for n, a in zip(names, ref[1:]) if n.startswith(("latents.encoder.", "latents.groups."))]
    assert enc and all(a.abs().max() > 0 for a in enc)


def _saved_bytes(glow, memory, steps_input):
    glow.set_memory(memory)
    total = [0]

    def pack(t):
        total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        glow.log_prob(*steps_input)[0].sum()
    return total[0]


def test_recompute_saves_no_activations_per_step():
    """What autograd keeps for the backward pass: it grows with the number of steps under standard
    backprop, and does not under recompute (the steps' graph is rebuilt layer by layer)."""
    g = torch.Generator().manual_seed(0)
    y = torch.rand(4, 1, 16, 16, generator=g, requires_grad=True)
    z = torch.randn(4, 3, generator=g)
    saved = {}
    for k in (2, 8):
        glow = ConditionalGlow((1, 16, 16), levels=2, steps=k, hidden=16, cond_dim=3)
        saved[k] = {m: _saved_bytes(glow, m, (y, z)) for m in ("standard", "recompute", "checkpoint")}
    assert saved[8]["standard"] > 3 * saved[2]["standard"]
    assert saved[8]["recompute"] == saved[2]["recompute"] < saved[2]["standard"] / 2
    assert saved[8]["checkpoint"] < saved[8]["standard"] / 3


def _float32_case(size: int, steps: int, hidden: int):
    """A randomised float32 2-level Glow conditioned on a 3-d z, a batch of 4 inputs, and the tensors
    whose gradients the recompute tests compare (z first, then every parameter)."""
    torch.manual_seed(0)
    glow = ConditionalGlow((1, size, size), levels=2, steps=steps, hidden=hidden, cond_dim=3)
    randomize_(glow, std=0.1)
    g = torch.Generator().manual_seed(1)
    y = torch.rand(4, 1, size, size, generator=g) - 0.5
    z = torch.randn(4, 3, generator=g, requires_grad=True)
    return glow, y, z, [z, *glow.parameters()]


def test_recompute_float32_gradients_close_to_standard():
    """In float32 the rebuilt activations carry rounding; over 2 x 8 steps the gradients still agree
    to 1e-3 of their scale."""
    glow, y, z, inputs = _float32_case(size=16, steps=8, hidden=16)

    def loss(mode):
        glow.set_memory(mode)
        return glow.log_prob(y, z)[0].sum()

    ref, got = _grads(lambda: loss("standard"), inputs), _grads(lambda: loss("recompute"), inputs)
    for a, b in zip(ref, got):
        assert (a - b).abs().max() <= 1e-3 * a.abs().max() + 1e-6


def test_train_memory_config_reaches_the_glow(tmp_path):
    from flowvae.config import ConfigError

    with pytest.raises(ConfigError, match="train.memory"):
        load_config(None, overrides=["train.memory=low"])
    with pytest.raises(ValueError, match="memory"):
        ConditionalGlow((1, 8, 8), 2, 1, 8).set_memory("low")


def test_recompute_under_bf16_autocast_matches_standard():
    """The backward pass re-enters the forward pass's autocast state. The rebuilt inputs carry float32
    rounding, which can flip a bf16 rounding in the coupling networks, so recompute agrees with standard
    backprop under bf16 to bf16's precision: its gradient error is no larger than bf16's own (bf16 vs fp32)."""
    glow, y, z, inputs = _float32_case(size=8, steps=2, hidden=8)

    def loss(mode, bf16=True):
        glow.set_memory(mode)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return glow.log_prob(y, z)[0].sum()

    fp32 = _grads(lambda: loss("standard", bf16=False), inputs)
    ref, got = _grads(lambda: loss("standard"), inputs), _grads(lambda: loss("recompute"), inputs)
    flat = lambda gs: torch.cat([t.flatten() for t in gs])
    bf16_error = (flat(ref) - flat(fp32)).norm()
    assert bf16_error > 0
    assert (flat(got) - flat(ref)).norm() <= bf16_error
