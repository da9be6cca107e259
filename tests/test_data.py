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


# ------------------------------------------------------------------ image modes and bit depths
def _png16_rgb(path, value):
    """A 16-bit-per-channel RGB PNG (PIL cannot write one), built from its chunks."""
    import struct
    import zlib

    h = w = 4
    raw = b"".join(b"\x00" + struct.pack(">" + "H" * 3 * w, *([value] * 3 * w)) for _ in range(h))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _palette(h=4, w=4):
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[: h // 2] = (200, 200, 200)
    rgb[h // 2 :] = (10, 10, 10)
    return Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)


def _alpha(mode, alpha):
    a = np.zeros((4, 4, 2 if mode == "LA" else 4), np.uint8)
    a[..., :-1] = (30, 60, 90)[: a.shape[-1] - 1]
    a[..., -1] = alpha
    return Image.fromarray(a, mode)


# (image, model channels, expected first pixel per channel, expected pixel set or None)
MODES = {
    "I;16 mid grey": (lambda: Image.fromarray(np.full((4, 4), 32896, np.uint16)), 1, [128], {128}),
    "I;16 black and white": (lambda: Image.fromarray(np.array([[0, 65535]] * 4, np.uint16).repeat(2, 1)), 1, [0], {0, 255}),
    "I;16 into RGB": (lambda: Image.fromarray(np.full((4, 4), 32896, np.uint16)), 3, [128, 128, 128], {128}),
    "P": (_palette, 1, [200], {200, 10}),
    "P into RGB": (_palette, 3, [200, 200, 200], {200, 10}),
    "RGBA opaque": (lambda: _alpha("RGBA", 255), 3, [30, 60, 90], None),
    "LA opaque": (lambda: _alpha("LA", 255), 1, [30], {30}),
    "1": (lambda: Image.fromarray(np.array([[True, False]] * 4).repeat(2, 1)), 1, [255], {0, 255}),
    "L": (lambda: Image.fromarray(np.full((4, 4), 77, np.uint8)), 1, [77], {77}),
    "RGB": (lambda: Image.fromarray(np.full((4, 4, 3), (1, 2, 3), np.uint8)), 3, [1, 2, 3], {1, 2, 3}),
}


@pytest.mark.parametrize("case", list(MODES))
def test_image_modes_load_their_true_pixel_values(tmp_path, case):
    make, channels, first, values = MODES[case]
    for i in range(3):
        make().save(tmp_path / f"im{i}.png")
    cfg = cfg_for("data.dataset=folder", f"data.root={tmp_path}", "model.image_size=4", f"model.image_channels={channels}",
                  "data.test_fraction=0.34")
    ds = load_dataset(cfg.data, cfg.model, "train")
    x, _ = ds[list(range(len(ds)))]
    assert x.dtype == torch.uint8 and x.shape == (2, channels, 4, 4)
    assert x[0, :, 0, 0].tolist() == first
    if values is not None:
        assert set(x.unique().tolist()) == values


def test_a_random_16_bit_image_keeps_its_grey_levels(tmp_path):
    from flowvae.data import read_image

    v = np.random.default_rng(0).integers(0, 65536, (8, 8)).astype(np.uint16)
    Image.fromarray(v).save(tmp_path / "a.png")
    x = read_image(tmp_path / "a.png", 1)[0].numpy().astype(int)
    assert np.abs(x - v / 257).max() <= 0.5  # round(v * 255 / 65535)
    assert abs(x.mean() - v.mean() / 257) < 0.1 and (x == 255).mean() < 0.05  # not clipped to white
    _png16_rgb(tmp_path / "rgb16.png", 32896)
    assert read_image(tmp_path / "rgb16.png", 3).unique().tolist() == [128]
    open(tmp_path / "m.pgm", "wb").write(b"P5\n4 4\n1023\n" + np.full(16, 1023, ">u2").tobytes())  # PIL reads 'I'
    assert read_image(tmp_path / "m.pgm", 1).unique().tolist() == [255]


@pytest.mark.parametrize("make,mode", [
    (lambda: _alpha("RGBA", 0), "RGBA"),
    (lambda: _alpha("LA", 128), "LA"),
    (lambda: Image.fromarray(np.full((4, 4), 70000, np.int32)), "I"),  # a 32-bit TIFF: no known scale
    (lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), "F"),
])
def test_unconvertible_modes_are_refused_naming_file_and_mode(tmp_path, make, mode):
    name = "bad.tif" if mode in ("I", "F") else "bad.png"
    for i in range(3):
        Image.fromarray(np.full((4, 4), 9, np.uint8)).save(tmp_path / f"ok{i}.png")
    make().save(tmp_path / name)
    cfg = cfg_for("data.dataset=folder", f"data.root={tmp_path}", "model.image_size=4", "data.test_fraction=0.25")
    with pytest.raises(DataError, match=rf"{name}: mode {mode} "):
        for split in ("train", "test"):  # refused at load time, in whichever split the file lands
            load_dataset(cfg.data, cfg.model, split)


def test_celeba_and_user_images_read_16_bit_files_exactly(tmp_path):
    from flowvae.data import read_image_files

    base = tmp_path / "celeba"
    (base / "img_align_celeba").mkdir(parents=True)
    Image.fromarray(np.full((150, 150), 32896, np.uint16)).save(base / "img_align_celeba" / "a.png")
    (base / "list_eval_partition.txt").write_text("a.png 0\n")
    cfg = cfg_for("data.dataset=celeba", f"data.root={tmp_path}", "data.image_size=8", "model.image_size=8",
                  "model.image_channels=3")
    assert load_dataset(cfg.data, cfg.model, "train")[[0]][0].unique().tolist() == [128]
    Image.fromarray(np.full((8, 8), 32896, np.uint16)).save(tmp_path / "one.png")
    ds = read_image_files(tmp_path / "one.png", (1, 8, 8))
    assert ds[[0]][0].unique().tolist() == [128]


def test_user_images_of_another_size_are_refused_unless_resizing(tmp_path):
    from flowvae.data import read_image_files

    _write_images(tmp_path / "u" / "small", 2, size=(8, 8))  # class folders, as data.dataset=folder reads them
    _write_images(tmp_path / "u" / "big", 1, size=(12, 12))
    with pytest.raises(DataError, match=r"1 of 3 images .* not 8x8 .*im0.png \(12x12\).*use --resize"):
        read_image_files(tmp_path / "u", (1, 8, 8), resize_hint="use --resize")
    x, _ = read_image_files(tmp_path / "u", (1, 8, 8), resize=True)[[0, 1, 2]]
    assert x.shape == (3, 1, 8, 8)
    with pytest.raises(DataError, match="not found"):
        read_image_files(tmp_path / "nope", (1, 8, 8))


def test_folder_listing_is_imagefolders_and_keeps_the_order(tmp_path):
    """The folder listing (torchvision's find_classes / make_dataset) gives the files and labels in the
    order the split depends on: classes sorted, files sorted within each, nested folders included."""
    from flowvae.data import list_images

    for cls, names in (("b", ["z.png", "a.PNG", "n/c.png", "skip.txt"]), ("a", ["y.jpg"])):
        for n in names:
            (tmp_path / "c" / cls / n).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / "c" / cls / n).write_bytes(b"")
    files, labels = list_images(tmp_path / "c")
    rel = [f.relative_to(tmp_path / "c").as_posix() for f in files]
    assert rel == ["a/y.jpg", "b/a.PNG", "b/z.png", "b/n/c.png"] and labels == [0, 1, 1, 1]
    flat, flat_labels = list_images(tmp_path / "c" / "b" / "n")
    assert [f.name for f in flat] == ["c.png"] and flat_labels == [0]
    assert str(flat[0]) == str(tmp_path / "c" / "b" / "n" / "c.png")  # paths as given, not resolved
