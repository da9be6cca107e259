"""Shared fixtures for the flowvae tests: tiny configs, seeded RNG and parameter randomisation.

Fresh flows are the identity (zero-initialised last layers and z projections), so tests that check
a layer's maths must randomise its parameters first; ``randomize`` does it with ``copy_`` under
no_grad (an optimizer-style update that bumps the parameters' version counters).
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn

# Single-threaded tests: tiny tensors gain nothing from threads, and on a busy machine torch's default
# (a thread per core) makes every step many times slower (README, "A busy machine"). Subprocesses
# (CLI, torchrun) inherit OMP_NUM_THREADS.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
# Subprocesses (torchrun workers, experiment scripts) import this checkout's flowvae, whatever is installed.
_ROOT = str(Path(__file__).resolve().parents[1])
os.environ["PYTHONPATH"] = os.pathsep.join([_ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])

from flowvae import FlowVAE, load_config

# A model that builds and runs in milliseconds on CPU: 1x8x8 images, 2 levels, 1 step, 4-d z.
TINY = [
    "model.image_size=8", "model.levels=2", "model.steps=1", "model.hidden=8", "model.z_dim=4",
    "model.encoder_width=8", "model.prior_hidden=16", "model.dequant_layers=2", "model.dequant_hidden=8",
]


def randomize_(module: nn.Module, std: float = 0.3, seed: int = 0, only=None) -> nn.Module:
    """Overwrite every parameter (or those whose name satisfies ``only``) with N(0, std^2) noise."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if only is None or only(name):
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype) * std)
    return module


def is_z_path(name: str) -> bool:
    """Glow parameters that are zero at init and carry z (and the kept half) into the flow:
    the couplings' last convs and the split/top priors."""
    return ".out." in name or name.startswith("priors.")


def poisoned_loss(at: set):
    """A FlowVAE.loss that returns a NaN loss on the training calls numbered in ``at`` (1-based, counted
    in this process), for tests of the non-finite-step skipping."""
    real = FlowVAE.loss
    calls = {"n": 0}

    def loss(self, x, kl_weight=None):
        out = real(self, x, kl_weight)
        if self.training:
            calls["n"] += 1
            if calls["n"] in at:
                out["loss"] = out["loss"] * float("nan")
        return out

    return loss


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def single_thread():
    """Tiny tensors: intra-op threads only add overhead (10x slower on a busy 2-core machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def make_model():
    """make_model(*overrides, seed=0, z_path_std=None, initialized=True) -> a tiny FlowVAE (TINY + overrides),
    marked initialised unless initialized=False.
    With z_path_std, the glow's zero-initialised parts are randomised so z really conditions the flow."""

    def make(*overrides: str, seed: int = 0, z_path_std=None, initialized: bool = True) -> FlowVAE:
        torch.manual_seed(seed)
        model = FlowVAE.from_config(load_config(None, overrides=TINY + list(overrides)))
        # The maths checked with these models do not depend on ActNorm's data-dependent init, which
        # loss / encode otherwise require; tests of initialize() pass initialized=False.
        model.initialized.fill_(initialized)
        if z_path_std is not None:
            randomize_(model.glow, z_path_std, seed=seed, only=is_z_path)
        return model

    return make


@pytest.fixture
def images():
    """images(n, c=1, size=8, seed=0) -> random uint8 images [n, c, size, size]."""

    def make(n: int, c: int = 1, size: int = 8, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randint(0, 256, (n, c, size, size), dtype=torch.uint8, generator=g)

    return make


def randomize_head(model, std=0.3, seed=0):
    """Encoder head -> mu and log sigma of order 1 (so posterior variance matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.latents.groups["global"].head.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model
