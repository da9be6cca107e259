"""model.coupling_impl: the GEMM path and the nn.Conv2d path of the coupling network are the same function
of the same weights (values and gradients, float64) for every way the conditioning enters; auto picks
GEMM on CPU and conv on CUDA; the switch reaches every coupling of a model."""
from __future__ import annotations

import itertools

import pytest
import torch

from conftest import TINY, randomize_
from flowvae import FlowVAE, load_config
from flowvae.config import ConfigError
from flowvae.flows import Cond
from flowvae.flows.coupling import CouplingNet

pytestmark = pytest.mark.usefixtures("single_thread")

DV, CM, CZ = 3, 2, 2
COMBOS = list(itertools.product([False, True], [0, CM], [0, CZ], [1, 3]))  # vec, map channels, zmap channels, kernel


def _inputs(vec, cmap, zmap, g, device="cpu"):
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64).to(device).requires_grad_()
    x = make(2, 3, 5, 4)
    return x, Cond(make(2, DV) if vec else None, make(2, cmap, 5, 4) if cmap else None, make(2, zmap, 5, 4) if zmap else None)


@pytest.mark.parametrize("vec, cmap, zmap, kernel", COMBOS)
def test_gemm_and_conv_agree_in_values_and_gradients(vec, cmap, zmap, kernel):
    if zmap and not vec:
        pytest.skip("a z map is decoded from z: the Glow never builds it without a global code")
    torch.manual_seed(0)
    net = CouplingNet(3, 6, 8, cond_dim=DV if vec else 0, cond_map_channels=cmap, zmap_channels=zmap,
                      kernel=kernel).double()
    randomize_(net, std=0.5)
    g = torch.Generator().manual_seed(1)
    x, cond = _inputs(vec, cmap, zmap, g)
    inputs = [x] + [t for t in cond if t is not None] + list(net.parameters())
    outs, grads = {}, {}
    w = torch.randn(2, 6, 5, 4, generator=g, dtype=torch.float64)
    for impl in ("gemm", "conv"):
        net.impl = impl
        outs[impl] = net(x, cond)
        grads[impl] = torch.autograd.grad((outs[impl] * w).sum(), inputs)
    assert torch.allclose(outs["gemm"], outs["conv"], rtol=0, atol=1e-12)
    for a, b in zip(grads["gemm"], grads["conv"]):
        assert torch.allclose(a, b, rtol=0, atol=1e-10)
    assert all(gr.abs().max() > 0 for gr in grads["conv"])  # every input and parameter gets a gradient


def test_auto_picks_gemm_on_cpu_and_conv_on_cuda():
    net = CouplingNet(2, 4, 8)
    assert net.resolved_impl(torch.device("cpu")) == "gemm"
    assert net.resolved_impl(torch.device("cuda", 0)) == "conv"
    net.impl = "conv"
    assert net.resolved_impl(torch.device("cpu")) == "conv"


def test_model_coupling_impl_switch_and_same_loss():
    with pytest.raises(ConfigError, match="coupling_impl"):
        load_config(None, overrides=["model.coupling_impl=cudnn"])
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    losses = {}
    for impl in ("gemm", "conv", "auto"):
        torch.manual_seed(0)
        model = FlowVAE(load_config(None, overrides=TINY + ["model.z_maps=2", f"model.coupling_impl={impl}"]).model)
        nets = [m for m in model.modules() if isinstance(m, CouplingNet)]
        assert nets and all(m.impl == impl for m in nets)
        randomize_(model.glow, std=0.2, seed=1)
        model.initialize(x)
        torch.manual_seed(5)
        losses[impl] = model.loss(x)["loss"]
    assert torch.allclose(losses["gemm"], losses["conv"], atol=1e-5)
    assert torch.equal(losses["gemm"], losses["auto"])


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("vec, cmap, zmap, kernel", [c for c in COMBOS if c[0] or not c[2]])
def test_gemm_and_conv_agree_on_cuda(vec, cmap, zmap, kernel):
    torch.manual_seed(0)
    net = CouplingNet(3, 6, 8, cond_dim=DV if vec else 0, cond_map_channels=cmap, zmap_channels=zmap,
                      kernel=kernel).double()
    randomize_(net, std=0.5)
    net = net.cuda()
    x, cond = _inputs(vec, cmap, zmap, torch.Generator().manual_seed(1), "cuda")
    inputs = [x] + [t for t in cond if t is not None] + list(net.parameters())
    res = {}
    for impl in ("gemm", "conv"):
        net.impl = impl
        out = net(x, cond)
        res[impl] = (out, torch.autograd.grad(out.square().sum(), inputs))
    assert torch.allclose(res["gemm"][0], res["conv"][0], atol=1e-10)
    for a, b in zip(res["gemm"][1], res["conv"][1]):
        assert torch.allclose(a, b, atol=1e-8)
