"""Image datasets as uint8 [C, H, W] tensors, local files first, downloads only when asked.

Every dataset here returns ``(images uint8 [N, C, H, W], labels long [N])`` for a
list of indices, so small datasets are indexed in memory a batch at a time and
large ones (CelebA, folders) go through a DataLoader with workers.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import DataConfig, ModelConfig
from .arrays import load_array, split_indices
from .errors import DataError
from .images import image_size, read_image

SAMPLE_DIR = Path(__file__).resolve().parent / "fashion_mnist_sample"
DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("fashion_mnist", "fashion_mnist_sample", "mnist", "cifar10", "celeba", "folder", "array")


# ----------------------------------------------------------------- idx files
def read_idx(path: Path) -> Tensor:
    """Read an (optionally gzipped) idx file of unsigned bytes, as MNIST and Fashion-MNIST ship.
    (torchvision's reader only takes the decompressed files inside its own folder layout; Debian's
    copy and ours are gzipped.)"""
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}. Re-download or reinstall the dataset.") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes (bad header)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    body = data[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise DataError(f"{path} is truncated: header says {dims}, file holds {len(body)} bytes of data")
    return torch.frombuffer(bytearray(body), dtype=torch.uint8).view(*dims)


def _find_idx(dirs: Sequence[Path], stem: str) -> Optional[Path]:
    for d in dirs:
        for name in (stem + ".gz", stem):
            if (d / name).is_file():
                return d / name
    return None


def _load_mnist_like(name: str, dirs: list[Path], split: str, tv_class: str, cfg: DataConfig) -> tuple[Tensor, Tensor]:
    prefix = "train" if split == "train" else "t10k"
    img = _find_idx(dirs, f"{prefix}-images-idx3-ubyte")
    lab = _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if (img is None or lab is None) and cfg.download:
        import torchvision

        root = Path(cfg.root or Path.home() / ".cache" / "flowvae")
        getattr(torchvision.datasets, tv_class)(str(root), train=split == "train", download=True)
        dirs = [root / tv_class / "raw"]
        img = _find_idx(dirs, f"{prefix}-images-idx3-ubyte")
        lab = _find_idx(dirs, f"{prefix}-labels-idx1-ubyte")
    if img is None or lab is None:
        looked = ", ".join(str(d) for d in dirs)
        fix = "install Debian's dataset-fashion-mnist, " if name == "fashion_mnist" else ""
        raise DataError(f"{name} {split} files ({prefix}-images-idx3-ubyte[.gz]) not found in: {looked}. "
                        f"Fix: {fix}set data.root to a folder holding them, or pass data.download=true.")
    images, labels = read_idx(img), read_idx(lab).long()
    if images.shape[0] != labels.shape[0]:
        raise DataError(f"{img} holds {images.shape[0]} images but {lab} holds {labels.shape[0]} labels")
    return images.unsqueeze(1), labels


def _mnist_dirs(cfg: DataConfig, sub: str, extra: Sequence[Path] = ()) -> list[Path]:
    dirs = []
    if cfg.root:
        r = Path(cfg.root).expanduser()
        dirs += [r, r / sub / "raw"]
    dirs += [Path.home() / ".cache" / "flowvae" / sub / "raw", *extra]
    return dirs


# ------------------------------------------------------------- datasets
class TensorImages(Dataset):
    """In-memory uint8 images with labels; indexable by a list of indices (a whole batch at once)."""

    in_memory = True

    def __init__(self, images: Tensor, labels: Tensor, name: str):
        self.images, self.labels, self.name = images.contiguous(), labels, name

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx):
        return self.images[idx], self.labels[idx]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])


class FileImages(Dataset):
    """Images read from files on demand (folders, CelebA), converted to the model's channels and size."""

    in_memory = False

    def __init__(self, files: list[Path], labels: list[int], channels: int, size: Optional[tuple[int, int]], name: str,
                 center_crop: Optional[int] = None):
        self.files, self.labels, self.channels, self.size, self.name = files, labels, channels, size, name
        self.center_crop = center_crop
        if not files:
            raise DataError(f"{name}: no images found")
        if size is None:
            self.size = self._load(0).shape[1:]

    def _load(self, i: int) -> Tensor:
        return read_image(self.files[i], self.channels, self.size, self.center_crop)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return self._load(idx), self.labels[idx]
        return torch.stack([self._load(int(i)) for i in idx]), torch.tensor([self.labels[int(i)] for i in idx])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)


IMG_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_IMG_EXT = IMG_EXTENSIONS  # the older private name


def list_images(folder: Path) -> tuple[list[Path], list[int]]:
    """Image files under ``folder`` (subfolders included) in sorted order; a first level of subfolders is
    taken as classes (torchvision's ImageFolder layout and listing, through its ``find_classes`` and
    ``make_dataset``), otherwise every file gets label 0. The order, and so data.test_fraction's fixed
    split, is the one this loader always had. The files are read by ``read_image`` (images.py), not
    ImageFolder's loader, which would clip 16-bit images and drop alpha channels unchecked.

    Measured (``python bench/folder_loading.py --images 2000 --rounds 11``, 28x28 PNGs, one thread, medians):
    this listing takes 0.81x the time of the hand-written ``os.walk`` it replaces; the up-front check,
    which now converts each mode exactly, takes 1.24x a bare decode (about 0.2 ms more per image)."""
    from torchvision.datasets.folder import find_classes, make_dataset

    folder = Path(folder)
    if any(d.is_dir() for d in folder.iterdir()):
        _, class_to_idx = find_classes(folder)
    else:  # a flat folder: one class, the folder itself (joined as folder/"", so the paths stay as given)
        class_to_idx = {"": 0}
    found = make_dataset(folder, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    return [Path(f) for f, _ in found], [label for _, label in found]


_list_images = list_images  # the older private name




def _validate_images(files: list[Path], resize: bool, where: str) -> None:
    """Decode every image once, up front: a corrupt file, or one whose mode cannot be converted exactly
    (images.py), fails now, naming it, not mid-training after a checkpoint. Without data.image_size all
    images must have one size (nothing is silently resized)."""
    sizes: dict[tuple[int, int], list[Path]] = {}
    for path in files:
        sizes.setdefault(image_size(path), []).append(path)
    if len(sizes) > 1 and not resize:
        common = sorted(sizes.items(), key=lambda kv: -len(kv[1]))
        listing = "; ".join(f"{h}x{w}: {len(ps)} (e.g. {ps[0].name})" for (h, w), ps in common[:4])
        (h, _), _ = common[0]
        raise DataError(f"{where} holds images of {len(sizes)} different sizes (HxW: {listing}). Set data.image_size "
                        f"(e.g. data.image_size={h}) to resize them all to one square size, or make them equal.")


def read_image_files(path, image_shape: tuple[int, int, int], resize: bool = False,
                     resize_hint: str = "resize them first") -> FileImages:
    """The images a user points a command at (``--images``): one file, or every image under a folder as
    ``list_images`` finds them, as a FileImages of the model's ``image_shape`` (C, H, W). Every file is decoded
    up front (a corrupt file or an unconvertible mode is named before any work). Images of another size are
    refused, naming them, unless ``resize`` (then they are resized, bicubic, to H x W); ``resize_hint`` is the
    fix the refusal suggests. Channels are converted (greyscale <-> RGB) like data.channels does."""
    p = Path(path).expanduser()
    if p.is_file():
        files, labels = [p], [0]
    elif p.is_dir():
        files, labels = list_images(p)
        if not files:
            raise DataError(f"no images ({', '.join(IMG_EXTENSIONS)}) under {p}")
    elif p.exists():
        raise DataError(f"{p} is neither an image file nor a folder")
    else:
        raise DataError(f"image file or folder not found: {p}")
    c, h, w = image_shape
    other = [(f, hw) for f in files for hw in [image_size(f)] if hw != (h, w)]
    listing = ", ".join(f"{f.name} ({a}x{b})" for f, (a, b) in other[:3]) + (", ..." if len(other) > 3 else "")
    if other and resize:
        print(f"note: resizing {len(other)} of {len(files)} images to {h}x{w}: {listing}")
    elif other:
        raise DataError(f"{len(other)} of {len(files)} images under {p} are not {h}x{w} (HxW), the model's size: "
                        f"{listing}. Nothing is resized silently: {resize_hint}.")
    return FileImages(files, labels, c, (h, w), f"images {p}")


def _folder(cfg: DataConfig, model: ModelConfig, split: str) -> Dataset:
    if not cfg.root:
        raise DataError("data.dataset=folder needs data.root=PATH (a folder of images, or with train/ and test/ inside)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    channels = cfg.channels or model.image_channels
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else None
    if (root / "train").is_dir() and (root / "test").is_dir():
        files, labels = list_images(root / split)
    else:
        files, labels = list_images(root)
        if not files:
            raise DataError(f"no images ({', '.join(_IMG_EXT)}) under {root}")
        keep = split_indices(len(files), cfg.test_fraction, split)
        files, labels = [files[i] for i in keep], [labels[i] for i in keep]
    if files:
        _validate_images(files, size is not None, f"image folder {root} ({split})")
    return FileImages(files, labels, channels, size, f"folder {root} ({split})")


def _cifar10(cfg: DataConfig, split: str) -> Dataset:
    import torchvision

    root = Path(cfg.root or Path.home() / ".cache" / "flowvae").expanduser()
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=split == "train", download=cfg.download)
    except RuntimeError as e:
        raise DataError(f"CIFAR-10 not found under {root} ({e}). Fix: set data.root to the folder holding "
                        f"cifar-10-batches-py, or pass data.download=true.") from None
    images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
    return TensorImages(images, torch.tensor(ds.targets), "cifar10")


def _celeba(cfg: DataConfig, split: str) -> Dataset:
    root = Path(cfg.root or Path.home() / ".cache" / "flowvae").expanduser()
    if cfg.download:
        import torchvision

        torchvision.datasets.CelebA(str(root), split="all", download=True)
    base = root / "celeba"
    img_dir = base / "img_align_celeba"
    part = base / "list_eval_partition.txt"
    if not img_dir.is_dir() or not part.is_file():
        raise DataError(f"CelebA not found: expected {img_dir} and {part}. Fix: set data.root to the folder "
                        f"holding celeba/, or pass data.download=true.")
    want = {"train": "0", "test": "2"}[split]
    names = [ln.split()[0] for ln in part.read_text().splitlines() if ln.strip() and ln.split()[1] == want]
    size = cfg.image_size or 64
    return FileImages([img_dir / n for n in names], [0] * len(names), 3, (size, size), f"celeba ({split})", center_crop=148)


def load_dataset(cfg: DataConfig, model: ModelConfig, split: str) -> Dataset:
    """The ``split`` ('train' or 'test') of the configured dataset, checked against the model's image shape."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    name = cfg.dataset
    if name == "fashion_mnist_sample":
        ds = TensorImages(*_load_mnist_like(name, [SAMPLE_DIR], split, "FashionMNIST", DataConfig()), name)
    elif name == "fashion_mnist":
        ds = TensorImages(*_load_mnist_like(name, _mnist_dirs(cfg, "FashionMNIST", [DEBIAN_FASHION]), split, "FashionMNIST", cfg), name)
    elif name == "mnist":
        ds = TensorImages(*_load_mnist_like(name, _mnist_dirs(cfg, "MNIST"), split, "MNIST", cfg), name)
    elif name == "cifar10":
        ds = _cifar10(cfg, split)
    elif name == "celeba":
        ds = _celeba(cfg, split)
    elif name == "folder":
        ds = _folder(cfg, model, split)
    elif name == "array":  # a folder decoded once by `flowvae prepare` (prepare.py)

        ds = load_array(cfg.root, split, cfg.test_fraction, cfg.image_size)
    else:
        raise DataError(f"unknown data.dataset {name!r}; choose one of {', '.join(DATASETS)}")
    if cfg.exclude_classes:
        if not isinstance(ds, TensorImages):
            raise DataError(f"data.exclude_classes works on the in-memory datasets (fashion_mnist, mnist, cifar10), not {name}")
        keep = ~torch.isin(torch.as_tensor(ds.labels), torch.tensor(cfg.exclude_classes))
        ds = TensorImages(ds.images[keep], torch.as_tensor(ds.labels)[keep], ds.name)
    limit = cfg.limit_train if split == "train" else cfg.limit_test
    if limit and isinstance(ds, TensorImages):
        ds = TensorImages(ds.images[:limit], ds.labels[:limit], ds.name)
    elif limit and hasattr(ds, "take"):
        ds = ds.take(limit)
    elif limit:
        ds.files, ds.labels = ds.files[:limit], ds.labels[:limit]
    want = (model.image_channels, *model.image_size)
    if tuple(ds.image_shape) != want:
        c, h, w = ds.image_shape
        raise DataError(f"{name} gives {c}x{h}x{w} images (CxHxW) but the model expects {want[0]}x{want[1]}x{want[2]}. "
                        f"Fix: set model.image_channels={c} model.image_size=[{h},{w}], or data.image_size / data.channels "
                        f"to resize or convert the images.")
    return ds


def iterate_batches(ds: Dataset, batch_size: int, shuffle: bool = False, seed: int = 0, epoch: int = 0,
                    drop_last: bool = False, start_batch: int = 0, workers: int = 0, indices: Optional[Tensor] = None):
    """Yield ``(images, labels)`` batches. The order of epoch ``e`` is a permutation seeded by (seed, e),
    so a resumed run can skip ``start_batch`` batches and see exactly the data it would have seen."""
    n = len(ds)
    if indices is None:
        if shuffle:
            g = torch.Generator().manual_seed(seed * 100003 + epoch)
            indices = torch.randperm(n, generator=g)
        else:
            indices = torch.arange(n)
    batches = [b for b in torch.split(indices, batch_size) if len(b)]  # split() of no indices gives one empty batch
    if drop_last and batches and len(batches[-1]) < batch_size:
        batches = batches[:-1]
    batches = batches[start_batch:]
    if getattr(ds, "in_memory", False):
        for b in batches:
            yield ds[b]
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=[b.tolist() for b in batches], num_workers=workers)
        yield from loader
