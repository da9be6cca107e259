"""`flowvae prepare`: a folder decoded once into a uint8 .npy equals the folder loader's images, split for split,
and is read back through a memory map; bad inputs give one-line errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from flowvae.cli import main
from flowvae.config import load_config
from flowvae.data import DataError, iterate_batches, load_dataset, prepare_folder
from flowvae.data.arrays import ArrayImages, labels_path


def _folder(root, n_per_class=6, classes=("cat", "dog"), size=(13, 11), fmt="png", seed=0):
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            h, w = size if i % 2 == 0 else (size[0] + 4, size[1] + 2)  # two sizes: resized to one
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.{fmt}")
    return root


def _cfg(dataset, root, size=8, channels=3, *extra):
    return load_config(None, [f"data.dataset={dataset}", f"data.root={root}", f"model.image_size={size}",
                              f"model.image_channels={channels}", "data.test_fraction=0.25", *extra])


def _all(ds):
    return ds[list(range(len(ds)))]


@pytest.mark.parametrize("channels", [3, 1])
def test_prepared_array_equals_the_folder_loader_split_for_split(tmp_path, channels):
    folder = _folder(tmp_path / "imgs")
    out = tmp_path / "imgs.npy"
    res = prepare_folder(folder, out, size=8, channels=channels)
    assert res["images"] == 12 and res["shape"] == [channels, 8, 8] and res["labels"]
    for split in ("train", "test"):
        f_cfg = _cfg("folder", folder, 8, channels, "data.image_size=8", f"data.channels={channels}")
        a_cfg = _cfg("array", out, 8, channels)
        fx, fy = _all(load_dataset(f_cfg.data, f_cfg.model, split))
        ax, ay = _all(load_dataset(a_cfg.data, a_cfg.model, split))
        assert ax.dtype == torch.uint8 and ax.shape == fx.shape
        assert torch.equal(ax, fx) and torch.equal(ay, fy)
    assert len(set(ay.tolist())) > 1 or len(set(fy.tolist())) >= 1  # class subfolders became labels
    assert np.load(labels_path(out)).tolist() == [0] * 6 + [1] * 6


def test_jpeg_center_crop_and_parallel_decode_match_the_file_loader(tmp_path):
    from flowvae.data.datasets import FileImages, list_images

    folder = _folder(tmp_path / "jpg", n_per_class=5, classes=("a",), size=(40, 30), fmt="jpg")
    serial, parallel = tmp_path / "s.npy", tmp_path / "p.npy"
    prepare_folder(folder, serial, size=16, center_crop=24, workers=0)
    prepare_folder(folder, parallel, size=16, center_crop=24, workers=2)
    files, labels = list_images(folder)
    want = FileImages(files, labels, 3, (16, 16), "ref", center_crop=24)[list(range(len(files)))][0]
    assert np.array_equal(np.load(serial), want.numpy()) and np.array_equal(np.load(parallel), want.numpy())
    assert not labels_path(serial).exists()  # one class: no labels file


def test_array_is_memory_mapped_and_batches_keep_their_order(tmp_path):
    out = tmp_path / "x.npy"
    prepare_folder(_folder(tmp_path / "imgs"), out, size=8)
    cfg = _cfg("array", out)
    ds = load_dataset(cfg.data, cfg.model, "train")
    assert isinstance(ds, ArrayImages) and isinstance(ds.array, np.memmap) and ds.array.mode == "r"
    full = np.load(out)
    idx = [5, 0, 7, 2]  # unsorted, as a shuffled batch is
    x, _ = ds[idx]
    assert np.array_equal(x.numpy(), full[ds.rows[idx]])
    x1, _ = ds[3]
    assert np.array_equal(x1.numpy(), full[ds.rows[3]])
    a = [x for x, _ in iterate_batches(ds, 4, shuffle=True, seed=1)]
    assert sum(len(b) for b in a) == len(ds) == 9
    limited = load_dataset(_cfg("array", out, 8, 3, "data.limit_train=5").data, cfg.model, "train")
    assert len(limited) == 5 and torch.equal(limited[[0, 4]][0], ds[[0, 4]][0])


def test_train_and_test_arrays_in_a_directory(tmp_path):
    for split, seed in (("train", 0), ("test", 1)):
        prepare_folder(_folder(tmp_path / split, seed=seed), tmp_path / "arr" / f"{split}.npy", size=8)
    cfg = _cfg("array", tmp_path / "arr")
    train, test = load_dataset(cfg.data, cfg.model, "train"), load_dataset(cfg.data, cfg.model, "test")
    assert len(train) == len(test) == 12
    assert torch.equal(_all(train)[0], torch.from_numpy(np.load(tmp_path / "arr" / "train.npy")))
    assert not torch.equal(_all(train)[0], _all(test)[0])


def test_training_reads_the_prepared_array(tmp_path):
    from flowvae.engine.train import train

    out = tmp_path / "x.npy"
    prepare_folder(_folder(tmp_path / "imgs", n_per_class=20), out, size=8)
    cfg = load_config(None, ["data.dataset=array", f"data.root={out}", "model.image_size=8", "model.image_channels=3",
                             "model.levels=2", "model.steps=1", "model.hidden=8", "model.z_dim=4", "model.encoder_width=8",
                             "train.batch_size=8", "train.max_steps=2", "train.init_batch_size=16", "train.eval_every=0",
                             "train.checkpoint_every=0", "train.threads=1", "eval.k=1"])
    res = train(cfg, tmp_path / "run", device="cpu", progress=False)
    assert res["images"] == 4 and np.isfinite(res["elbo_bpd"])  # the test split: data.test_fraction=0.1 of 40


def test_prepare_errors_are_clear(tmp_path, capsys):
    with pytest.raises(DataError, match="image folder not found"):
        prepare_folder(tmp_path / "missing", tmp_path / "x.npy")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images"):
        prepare_folder(tmp_path / "empty", tmp_path / "x.npy")
    folder = _folder(tmp_path / "imgs")
    with pytest.raises(DataError, match="ending in .npy"):
        prepare_folder(folder, tmp_path / "x.bin")
    with pytest.raises(DataError, match="--size"):  # two image sizes and no --size
        prepare_folder(folder, tmp_path / "x.npy")
    (folder / "cat" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png"):
        prepare_folder(folder, tmp_path / "x.npy", size=8)
    assert not list(tmp_path.glob("x.npy*"))  # nothing half-written left behind
    assert main(["prepare", "--data", str(folder), "--out", str(tmp_path / "y.npy"), "--size", "8", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "broken.png" in err and "Traceback" not in err


def test_array_loader_errors_are_clear(tmp_path):
    def load(root, *extra, size=8):
        cfg = _cfg("array", root, size, 3, *extra)
        return load_dataset(cfg.data, cfg.model, "train")

    with pytest.raises(DataError, match="needs data.root"):
        load("")
    with pytest.raises(DataError, match="not found"):
        load(tmp_path / "missing.npy")
    np.save(tmp_path / "float.npy", np.zeros((4, 3, 8, 8), dtype=np.float32))
    with pytest.raises(DataError, match="uint8"):
        load(tmp_path / "float.npy")
    (tmp_path / "junk.npy").write_bytes(b"\x93NUMPY garbage")
    with pytest.raises(DataError, match="not a readable"):
        load(tmp_path / "junk.npy")
    (tmp_path / "dir").mkdir()
    with pytest.raises(DataError, match="train.npy"):
        load(tmp_path / "dir")
    np.save(tmp_path / "ok.npy", np.zeros((10, 3, 8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="--size 16"):
        load(tmp_path / "ok.npy", "data.image_size=16")
    with pytest.raises(DataError, match="model expects 3x16x16"):
        load(tmp_path / "ok.npy", size=16)
    assert len(load(tmp_path / "ok.npy")) == 8
