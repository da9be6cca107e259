"""The Python API's argument checks: scalars of any library are accepted, tensors without values refused
clearly, and absurd sizes refused up front naming the size."""
import time

import numpy as np
import pytest
import torch

from flowvae.engine import generate
from flowvae.uses import restore
from flowvae.data.datasets import TensorImages
from flowvae.uses.score import score_dataset
from flowvae.model import MAX_IW_DRAWS


@pytest.mark.parametrize("k", [np.int64(3), np.int32(3), torch.tensor(3), np.array(3)])
def test_numpy_and_0d_tensor_counts_are_accepted(make_model, images, k):
    model = make_model()
    x = images(2)
    torch.manual_seed(0)
    want = model.log_prob(x, k=3)
    torch.manual_seed(0)
    assert torch.equal(model.log_prob(x, k=k), want)
    assert model.sample(k).shape == (3, 1, 8, 8)
    assert model.score(x, k=k)["bpd"].shape == (2,)


@pytest.mark.parametrize("t", [np.float32(0.7), np.float64(0.7), torch.tensor(0.7), np.array(0.7), np.int64(1)])
def test_numpy_and_0d_tensor_numbers_are_accepted(make_model, images, t):
    model = make_model()
    torch.manual_seed(0)
    want = model.sample(2, temperature=float(t), z_temperature=float(t))
    torch.manual_seed(0)
    assert torch.equal(model.sample(2, temperature=t, z_temperature=t), want)
    assert model.denoise(images(2), sigma=np.float32(10.0), steps=np.int64(1)).shape == (2, 1, 8, 8)


@pytest.mark.parametrize("bad", [2.5, 4.0, True, np.bool_(True), torch.tensor(True), torch.tensor(3.0),
                                 torch.tensor([3]), np.float64(3.0), "3", None])
def test_non_integer_counts_are_refused_without_contradiction(make_model, images, bad):
    model = make_model()
    with pytest.raises(ValueError, match="n must be >= 1 and an integer"):
        model.sample(bad)
    with pytest.raises(ValueError, match="k must be >= 1 and an integer"):
        model.log_prob(images(2), k=bad)


def test_restore_arguments_are_checked_before_any_work(make_model, images):
    model = make_model()
    x = images(2)
    mask = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    mask[..., 4:, :] = True
    for kw, match in (({"samples": 1.5}, "samples must be >= 0 and an integer, got 1.5"),
                      ({"samples": -1}, "samples must be >= 0"),
                      ({"steps": 2.5}, "steps must be >= 0 and an integer"),
                      ({"lr": float("nan")}, "lr must be a finite number > 0"),
                      ({"seed": 0.5}, "seed must be an integer")):
        with pytest.raises(ValueError, match=match):
            model.inpaint(x, mask, **kw)
    with pytest.raises(ValueError, match="mask is on the meta device"):
        model.inpaint(x, mask.to("meta"))
    with pytest.raises(ValueError, match="sigma must be a finite number > 0"):
        model.denoise(x, sigma=np.float32("nan"))
    with pytest.raises(ValueError, match="salt_pepper must be True or False"):
        model.denoise(x, salt_pepper="yes")
    out = model.inpaint(x, mask, samples=np.int64(1), steps=torch.tensor(1), seed=np.int64(3))
    assert out["samples"].shape == (1, 2, 1, 8, 8)
    with pytest.raises(ValueError, match="samples must be >= 0 and an integer"):
        restore.inpaint(model, x, mask, samples=1.5)  # the engine function checks too: the CLI path
    noisy = x.clone()
    noisy[:, :, 0, 0] = 255
    assert model.denoise(noisy, salt_pepper=np.bool_(True), steps=1).shape == x.shape


def test_tensors_without_values_are_refused_clearly(make_model, images):
    model = make_model()
    x = images(2)
    for call in (model.log_prob, model.encode, model.loss, model.score):
        with pytest.raises(ValueError, match="x is on the meta device"):
            call(x.to("meta"))
        with pytest.raises(ValueError, match=r"x is a sparse_coo tensor; pass a dense one \(x.to_dense\(\)\)"):
            call(x.to_sparse())
    z, eps = model.encode(x)
    with pytest.raises(ValueError, match="eps is on the meta device"):
        model.decode(z, eps.to("meta"))
    with pytest.raises(ValueError, match="temperature is a tensor on the meta device"):
        model.sample(2, temperature=torch.tensor(0.5, device="meta"))


def test_absurd_sizes_are_refused_at_once_naming_the_size(make_model, images):
    model = make_model()
    start = time.monotonic()
    with pytest.raises(ValueError, match=r"sample\(n=10,000,000,000,000\).*would need about .* TiB of memory .* free"):
        model.sample(10**13)
    with pytest.raises(ValueError, match=r"sample\(n=10,000,000,000,000\)"):
        generate.sample_images(model, 10**13)  # the path of `flowvae sample --n`
    with pytest.raises(ValueError, match=rf"k=10,000,000 draws per image .* \({MAX_IW_DRAWS:,}\)"):
        model.log_prob(images(1), k=10**7)
    with pytest.raises(ValueError, match="k=10,000,000 draws per image"):
        model.score(images(1), k=10**7)
    with pytest.raises(ValueError, match="k=10,000,000 draws per image"):
        score_dataset(model, TensorImages(images(2), torch.zeros(2), "t"), k=10**7)  # `flowvae score --k`
    assert time.monotonic() - start < 5


def test_sample_in_batches_is_the_same_stream_and_fits(make_model, monkeypatch):
    model = make_model(z_path_std=0.1)
    torch.manual_seed(1)
    old = torch.cat([model.sample(min(3, 7 - i)) for i in range(0, 7, 3)])  # what sample_images used to do
    torch.manual_seed(1)
    assert torch.equal(model.sample(7, batch=3), old)
    torch.manual_seed(1)
    assert torch.equal(generate.sample_images(model, 7, 1.0, 1.0, batch=3), old)
    import flowvae.sizes as sizes

    monkeypatch.setattr(sizes, "available_bytes", lambda device: 100 * 64 + 4000)  # 100 images of 64 bytes and one batch fit
    with pytest.raises(ValueError, match="sample\\(n=200\\)"):
        model.sample(200, batch=1)
    assert model.sample(90, batch=1).shape == (90, 1, 8, 8)


def test_level_accepts_numpy_and_tensor_indices(make_model, images):
    model = make_model("model.injection=hierarchical")
    assert model.group_shape(np.int64(0)) == model.group_shape(0) == model.group_shape(torch.tensor(0))


def test_swap_grid_refuses_a_flow_only_model(make_model, images):
    with pytest.raises(ValueError, match="flow-only"):
        generate.swap_grid(make_model("model.type=glow"), images(2))


def test_a_batch_too_large_for_memory_is_refused_before_the_pass(make_model, images, monkeypatch):
    import flowvae.sizes as sizes

    model = make_model()
    x = images(100)
    monkeypatch.setattr(sizes, "available_bytes", lambda device: 50 * 2080)  # ~50 tiny-model images per pass
    with pytest.raises(ValueError, match=r"log_prob of 100 images \(k=1, chunk=256: 100 images per pass\).*Pass fewer"):
        model.log_prob(x)
    with pytest.raises(ValueError, match=r"k=4, chunk=256: 200 images per pass"):
        model.log_prob(x, k=4)
    assert model.log_prob(x[:10], k=4, chunk=40).shape == (10,)  # 40 images per pass fit
