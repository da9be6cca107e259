"""Datasets: local files first, clear errors on missing, corrupt or mismatched data."""
import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from flowvae.config import load_config
from flowvae.data import DataError, iterate_batches, load_dataset, read_idx


def cfg_for(*overrides):
    return load_config(None, list(overrides))


def test_shipped_sample_is_real_fashion_mnist():
    cfg = cfg_for("data.dataset=fashion_mnist_sample")
    train, test = load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test")
    assert len(train) == 5000 and len(test) == 1000
    x, y = train[torch.arange(100)]
    assert x.dtype == torch.uint8 and x.shape == (100, 1, 28, 28)
    assert set(y.tolist()) <= set(range(10)) and len(set(y.tolist())) == 10
    # real clothing images: dark background border, bright objects, many grey levels
    assert x[:, :, 0, :].float().mean() < 30 and x.float().mean() > 40 and len(torch.unique(x)) > 200


# ------------------------------------------------------------------ image folders checked up front
def _png(path, size=(28, 28), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8)).save(path)


def _folder_cfg(root, *extra):
    return load_config(None, ["data.dataset=folder", f"data.root={root}", "model.image_size=28", *extra])


def test_no_empty_batch_from_an_exhausted_index_list():
    ds = torch.utils.data.TensorDataset(torch.zeros(4, 1, 8, 8, dtype=torch.uint8))
    assert list(iterate_batches(ds, 2, indices=torch.zeros(0, dtype=torch.long))) == []


def test_a_corrupt_image_is_found_up_front(tmp_path):
    for i in range(6):
        _png(tmp_path / "train" / f"{i}.png", seed=i)
    _png(tmp_path / "test" / "0.png")
    bad = tmp_path / "train" / "3.png"
    bad.write_bytes(bad.read_bytes()[:400])  # truncated: the header reads, the pixels do not
    cfg = _folder_cfg(tmp_path)
    with pytest.raises(DataError, match=r"cannot read image .*3\.png"):
        load_dataset(cfg.data, cfg.model, "train")  # at load time, before any batch is read


def test_mixed_image_sizes_need_data_image_size(tmp_path):
    for i in range(4):
        _png(tmp_path / f"a{i}.png", (28, 28))
        _png(tmp_path / f"b{i}.png", (32, 32))
    cfg = _folder_cfg(tmp_path)
    with pytest.raises(DataError, match=r"different sizes .*28x28.*32x32.*data.image_size"):
        load_dataset(cfg.data, cfg.model, "train")
    cfg = _folder_cfg(tmp_path, "data.image_size=28")
    assert load_dataset(cfg.data, cfg.model, "train")[torch.arange(2)][0].shape == (2, 1, 28, 28)


def test_limit_and_iteration_order_is_reproducible():
    cfg = cfg_for("data.dataset=fashion_mnist_sample", "data.limit_train=100")
    ds = load_dataset(cfg.data, cfg.model, "train")
    assert len(ds) == 100
    a = [x for x, _ in iterate_batches(ds, 16, shuffle=True, seed=3, epoch=1, drop_last=True)]
    b = [x for x, _ in iterate_batches(ds, 16, shuffle=True, seed=3, epoch=1, drop_last=True, start_batch=2)]
    assert len(a) == 6 and len(b) == 4
    assert all(torch.equal(u, v) for u, v in zip(a[2:], b))
    c = [x for x, _ in iterate_batches(ds, 16, shuffle=True, seed=3, epoch=2, drop_last=True)]
    assert not torch.equal(a[0], c[0])


def test_missing_and_corrupt_idx(tmp_path):
    cfg = cfg_for("data.dataset=mnist", f"data.root={tmp_path}")
    with pytest.raises(DataError, match="not found in"):
        load_dataset(cfg.data, cfg.model, "train")
    bad = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(bad, "wb") as f:
        f.write(bytes([0, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28]) + b"\x00" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx(bad)
    bad.write_bytes(b"garbage that is not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(bad)


def _write_images(folder, n, size=(28, 28), mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        shape = size if mode == "L" else (*size, 3)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(folder / f"im{i}.png")


def test_image_folder_split_resize_and_channels(tmp_path):
    _write_images(tmp_path / "imgs" / "cats", 6, size=(40, 40), mode="RGB")
    _write_images(tmp_path / "imgs" / "dogs", 4, size=(40, 40), mode="RGB")
    cfg = cfg_for("data.dataset=folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=28", "data.test_fraction=0.2")
    train, test = load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test")
    assert len(train) == 8 and len(test) == 2
    x, y = train[[0, 1, 2]]
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.uint8
    cfg3 = cfg_for("data.dataset=folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=32",
                   "model.image_channels=3", "model.image_size=32")
    x3, _ = load_dataset(cfg3.data, cfg3.model, "train")[[0]]
    assert x3.shape == (1, 3, 32, 32)


def test_folder_errors_name_the_problem(tmp_path):
    _write_images(tmp_path / "imgs", 5, size=(32, 32))
    cfg = cfg_for("data.dataset=folder", f"data.root={tmp_path / 'imgs'}")
    with pytest.raises(DataError, match=r"gives 1x32x32 images .* model.image_size=\[32,32\]"):
        load_dataset(cfg.data, cfg.model, "train")
    (tmp_path / "imgs" / "im0.png").write_bytes(b"this is not a png")
    cfg = cfg_for("data.dataset=folder", f"data.root={tmp_path / 'imgs'}", "data.image_size=28")
    with pytest.raises(DataError, match="im0.png"):
        for split in ("train", "test"):
            ds = load_dataset(cfg.data, cfg.model, split)
            ds[list(range(len(ds)))]
    with pytest.raises(DataError, match="needs data.root"):
        load_dataset(cfg_for("data.dataset=folder").data, cfg.model, "train")
    with pytest.raises(DataError, match="not found"):
        load_dataset(cfg_for("data.dataset=folder", f"data.root={tmp_path / 'nope'}").data, cfg.model, "train")


def test_unknown_dataset_and_cifar_without_download(tmp_path):
    with pytest.raises(DataError, match="unknown data.dataset"):
        cfg = cfg_for("data.dataset=imagenet")
        load_dataset(cfg.data, cfg.model, "train")
    cfg = cfg_for("data.dataset=cifar10", f"data.root={tmp_path}", "model.image_channels=3", "model.image_size=32")
    with pytest.raises(DataError, match="data.download=true"):
        load_dataset(cfg.data, cfg.model, "train")
