"""A shipped model's per-image bound must not depend on the noise of the draw (dequantisation u and code z)
by more than a fraction of a bit, on the test images where it did (tests/data/fashion_mnist_hard.pt: 6573, the
worst of the older models, 4203, v2's highest bound, and 8033, v2's largest spread over the whole test set under
evaluate's seeds 0-2, 0.61 bits/dim; 1754, whose bound ran away on rare draws of the longer runs, and 480,
where the non-expanding coupling's did; written by experiments/bounded_flow/make_fixture.py) and on ordinary ones.

What shows this test can fail: the shipped hierarchical weights scored under a normal base instead of the base
with linear tails they were trained with (model.base_tail=0.5) span about 25 bits/dim on 6573, a strict xfail;
under the base of its earlier retrain (model.base_tail=1) the shipped model itself spanned 0.88
(experiments/bounded_flow, section 5).

One draw's ELBO is a Monte-Carlo estimate. Where the flow's likelihood is far sharper along the code than the
posterior is narrow (test image 8910 under the 24,000-step pretrained:fashion_mnist, tests/data/
fashion_mnist_sharp.pt), one draw can move it by a bit, while the importance-weighted bound over 32 draws, the
per-image number evaluate reports as iw32_bpd, holds still: the last test checks that bound on every hard image."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from flowvae import FlowVAE, load_checkpoint
from flowvae.checkpoint import save_checkpoint
from flowvae.config import load_config
from flowvae.data import load_dataset
from flowvae.engine.evaluate import bound_draws
from flowvae.flows.tails import StandardNormal

from conftest import TINY

pytestmark = pytest.mark.usefixtures("single_thread")

HARD = Path(__file__).resolve().parent / "data" / "fashion_mnist_hard.pt"
DRAWS = range(8)
MAX_SPREAD = 0.75  # bits/dim between the highest and lowest of DRAWS for one image


def _old(reason: str):
    return pytest.mark.xfail(strict=True, reason=reason)


@pytest.fixture(scope="module")
def images():
    hard = torch.load(HARD, weights_only=True)
    cfg = load_config(None, ["data.dataset=fashion_mnist_sample"])
    ordinary = load_dataset(cfg.data, cfg.model, "test")[torch.arange(30)][0]
    return torch.cat([hard["images"], ordinary]), hard["indices"]


@pytest.mark.parametrize("name,normal_base", [
    ("fashion_mnist", False),
    ("fashion_mnist_hierarchical", False),
    ("fashion_mnist_hierarchical_small", False),
    ("fashion_mnist_levels", False),
    ("fashion_mnist_swap", False),
    # measured with these draws: test image 6573 spans 76.30..100.97 (the first hierarchical weights: 15.54..256.54)
    pytest.param("fashion_mnist_hierarchical_small", True, marks=_old("a normal base multiplies each move of eps by eps")),
])
def test_per_image_bound_barely_depends_on_the_draw(name, normal_base, images):
    x, hard_indices = images
    model, _, _ = load_checkpoint(f"pretrained:{name}")
    if normal_base:
        model.glow.base = StandardNormal()
    bpd = bound_draws(model, x, DRAWS)
    assert bpd.shape == (len(DRAWS), len(x)) and torch.isfinite(bpd).all()
    assert (bpd.std(0) > 0).all()  # the draws do differ: not a deterministic evaluation
    spread = bpd.max(0).values - bpd.min(0).values
    worst = int(spread.argmax())
    label = f"test image {hard_indices[worst]}" if worst < len(hard_indices) else f"sample test image {worst - len(hard_indices)}"
    assert spread.max() < MAX_SPREAD, (f"{name}: {label}'s bound spans {bpd[:, worst].min():.2f}.."
                                       f"{bpd[:, worst].max():.2f} bits/dim over {len(DRAWS)} draws")


MANY_DRAWS = range(256)
MAX_MOVE = 1.0  # bits/dim: under one bit, the "a fraction of a bit"


@pytest.mark.slow
@pytest.mark.parametrize("name,normal_base", [
    ("fashion_mnist", False), ("fashion_mnist_hierarchical", False), ("fashion_mnist_hierarchical_small", False),
    ("fashion_mnist_levels", False), ("fashion_mnist_swap", False),
    pytest.param("fashion_mnist_hierarchical_small", True, marks=_old("a normal base multiplies each move of eps by eps"))])
def test_no_draw_moves_a_hard_image_by_a_bit(name, normal_base):
    """Rare draws are what break a bound: under the earlier pretrained:fashion_mnist (couplings that could expand,
    a normal base) image 1754 sat within 0.2 of its median on 196 of 256 draws, more than a bit from it on 8 and
    3.35 bits/dim above it on one (each image alone in its batch, as here; rare draws of the code), where 8 draws
    in the test above stayed under 0.75 (experiments/bounded_flow, section 8). This test failed on those weights;
    today's recipe, with a sigmoid coupling scale and linear tails trained from the start, moves 1754 by 0.09
    at 9,172 steps and by 0.11 at 24,000 (pretrained:fashion_mnist)."""
    hard = torch.load(HARD, weights_only=True)
    model, _, _ = load_checkpoint(f"pretrained:{name}")
    if normal_base:
        model.glow.base = StandardNormal()
    for i, x in zip(hard["indices"], hard["images"]):
        bpd = bound_draws(model, x[None], MANY_DRAWS)[:, 0]
        assert torch.isfinite(bpd).all() and bpd.std() > 0
        move = (bpd - bpd.median()).abs().max()
        assert move < MAX_MOVE, (f"{name}: test image {i}'s bound moves {move:.2f} bits/dim from its median "
                                 f"{bpd.median():.2f} on one of {len(MANY_DRAWS)} draws")


SHARP = Path(__file__).resolve().parent / "data" / "fashion_mnist_sharp.pt"
IW_K = 32  # configs' eval.k: what evaluate reports as iw32_bpd, per image as iw32_bpd_max
MAX_IW_SPREAD = 0.25  # bits/dim between the highest and lowest of DRAWS for one image


@pytest.mark.parametrize("name,normal_base,k", [
    ("fashion_mnist", False, IW_K),
    ("fashion_mnist_hierarchical", False, IW_K),
    ("fashion_mnist_hierarchical_small", False, IW_K),
    ("fashion_mnist_levels", False, IW_K),
    ("fashion_mnist_swap", False, IW_K),
    # measured with these draws: 6573 spans 8.67 bits/dim even under the importance-weighted bound
    pytest.param("fashion_mnist_hierarchical_small", True, IW_K, marks=_old("a normal base multiplies each move of eps by eps")),
    # measured with these draws: one draw's ELBO of 8910 spans 1.16 bits/dim (its importance-weighted bound 0.09)
    pytest.param("fashion_mnist", False, 1, marks=_old("one draw of the code: the flow's likelihood of 8910 changes "
                                                        "36-108 times faster along z than other images'")),
])
def test_importance_weighted_bound_of_every_hard_image_barely_depends_on_the_draw(name, normal_base, k):
    """The per-image number to read for one image is the importance-weighted bound (evaluate's iw32_bpd):
    under pretrained:fashion_mnist (24,000 steps) one draw's ELBO of test image 8910 (tests/data/
    fashion_mnist_sharp.pt) moves by over a bit with the draw of the code, because its flow's likelihood
    changes 36 to 108 times faster along the code than other images' while its posterior is as wide
    (experiments/bits_budget, "Image 8910"). Over 32 draws the bound of every hard image holds still."""
    hard, sharp = torch.load(HARD, weights_only=True), torch.load(SHARP, weights_only=True)
    x, indices = torch.cat([hard["images"], sharp["images"]]), hard["indices"] + sharp["indices"]
    model, _, _ = load_checkpoint(f"pretrained:{name}")
    if normal_base:
        model.glow.base = StandardNormal()
    bpd = bound_draws(model, x, DRAWS, k=k)
    assert torch.isfinite(bpd).all() and (bpd.std(0) > 0).all()
    spread = bpd.max(0).values - bpd.min(0).values
    worst = int(spread.argmax())
    assert spread.max() < MAX_IW_SPREAD, (f"{name}: test image {indices[worst]}'s bound (k={k}) spans "
                                          f"{bpd[:, worst].min():.2f}..{bpd[:, worst].max():.2f} bits/dim")


def test_bound_draws_leave_the_random_state_alone(images):
    model, _, _ = load_checkpoint("pretrained:fashion_mnist")
    state = torch.random.get_rng_state()
    a = bound_draws(model, images[0][:4], [3, 4])
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(a, bound_draws(model, images[0][:4], [3, 4]))  # seeded
    assert not torch.equal(a[0], a[1])
    iw = bound_draws(model, images[0][:4], [3, 4], k=4)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(iw, bound_draws(model, images[0][:4], [3, 4], k=4))
    with pytest.raises(ValueError, match="at least one seed"):
        bound_draws(model, images[0][:4], [])


def test_checkpoints_written_before_the_bounds_load_without_them(tmp_path):
    torch.manual_seed(0)
    cfg = load_config(None, TINY)
    model = FlowVAE.from_config(cfg)
    x = torch.randint(0, 256, (16, *model.image_shape), dtype=torch.uint8)
    model.initialize(x)
    stored = cfg.to_dict()
    for key in ("shift_clamp", "base_tail"):  # a config written before the keys existed
        del stored["model"][key]
    save_checkpoint(tmp_path / "old.pt", {"model": model.state_dict(), "ema": None, "config": stored, "step": 0})
    old, old_cfg, _ = load_checkpoint(tmp_path / "old.pt")
    assert old_cfg.model.shift_clamp == 0.0 and old_cfg.model.base_tail == 0.0
    assert isinstance(old.glow.base, StandardNormal)
    model.eval()
    assert torch.allclose(bound_draws(old, x, [0]), bound_draws(model, x, [0]))  # scored as before


def test_the_recipes_set_the_bounds():
    configs = Path(__file__).resolve().parents[1] / "configs"
    recommended = load_config(configs / "fashion_mnist.yaml").model
    assert recommended.shift_clamp > 0 and recommended.base_tail > 0 and recommended.coupling_scale == "sigmoid"
    hier = load_config(configs / "fashion_mnist_hierarchical_small.yaml").model
    assert hier.shift_clamp > 0 and hier.injection == "hierarchical"
    _, shipped, _ = load_checkpoint("pretrained:fashion_mnist_hierarchical_small")
    assert shipped.model.base_tail > 0 and shipped.model.shift_clamp > 0
    full = load_config(configs / "fashion_mnist_hierarchical.yaml").model
    assert full.shift_clamp > 0 and full.base_tail > 0 and full.coupling_scale == "sigmoid"
    assert full.injection == "hierarchical"
    with pytest.raises(ValueError, match="shift_clamp"):
        load_config(None, ["model.shift_clamp=-1"])
