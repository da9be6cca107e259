"""A one-time decode of an image folder into one uint8 array on disk, read back through a memory map.

    flowvae prepare --data my_images/ --out my_images.npy --size 64        # decode once (in parallel)
    flowvae train --config ... data.dataset=array data.root=my_images.npy  # train at memory speed

Folder and CelebA data are decoded with PIL on every access: fine on a CPU, too slow to feed a GPU
(docs/benchmarks.md, "Data loading"). :func:`prepare_folder` decodes every image once, exactly as the
folder loader would (the same channel conversion, centre crop and resize, so the array holds the same
pixels), into ``[N, C, H, W]`` uint8 in a ``.npy`` file (NumPy's format: a header and the raw bytes), and
the labels of class subfolders into ``<name>.labels.npy`` beside it.

:class:`ArrayImages` reads it back with ``numpy.load(mmap_mode="r")``: nothing is decoded and the OS page
cache holds the bytes, so a batch is a gather from memory. ``data.root`` is the ``.npy`` file (split into
train and test like a folder: ``data.test_fraction`` with the folder loader's fixed permutation, so the
split is the same images as the folder's) or a directory holding ``train.npy`` and ``test.npy`` (prepare
a folder's ``train/`` and ``test/`` separately).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .datasets import DataError, FileImages, list_images, split_indices

CHUNK = 256  # images decoded per DataLoader item


def labels_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npy")] + ".labels.npy")


def prepare_folder(folder: Union[str, Path], out: Union[str, Path], size: Optional[int] = None, channels: int = 3,
                   center_crop: Optional[int] = None, workers: int = 0, progress: bool = False) -> dict:
    """Decode every image under ``folder`` (the folder loader's file order and labels) into ``out`` (.npy).
    Written to a temporary file and renamed at the end, so ``out`` is never half-written. Returns a summary."""
    folder, out = Path(folder).expanduser(), Path(out).expanduser()
    if out.suffix != ".npy":
        raise DataError(f"--out {out}: the prepared array is a NumPy file; give a name ending in .npy")
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grey) or 3 (RGB), got {channels}")
    if not folder.is_dir():
        raise DataError(f"image folder not found: {folder}")
    files, labels = list_images(folder)
    if not files:
        raise DataError(f"no images under {folder}")
    if not size and not center_crop:
        _check_one_size(files, folder)
    ds = FileImages(files, labels, channels, (size, size) if size else None, f"folder {folder}", center_crop=center_crop)
    shape = (len(files), *ds.image_shape)
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    try:
        _decode_into(arr, ds, workers, progress)
        arr.flush()
        del arr
        if any(labels):
            np.save(labels_path(out), np.asarray(labels, dtype=np.int64))
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"images": shape[0], "shape": list(shape[1:]), "bytes": out.stat().st_size, "out": str(out),
            "labels": any(labels)}


def _check_one_size(files: list[Path], folder: Path) -> None:
    """Without --size every image must have one size (read from the file headers: nothing is decoded)."""
    from PIL import Image

    sizes: dict[tuple[int, int], Path] = {}
    for path in files:
        try:
            with Image.open(path) as im:
                sizes.setdefault((im.height, im.width), path)
        except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, ...
            raise DataError(f"cannot read image {path} ({type(e).__name__}: {str(e).strip()[:200]}). "
                            f"Remove or replace the file.") from None
        if len(sizes) > 1:
            (a, pa), (b, pb) = list(sizes.items())[:2]
            raise DataError(f"{folder} holds images of different sizes ({pa.name}: {a[0]}x{a[1]}, {pb.name}: "
                            f"{b[0]}x{b[1]}, HxW): pass --size to resize all to one square size")


def _decode_into(arr: np.ndarray, ds: FileImages, workers: int, progress: bool) -> None:
    from ..runtime import Progress

    chunks = [list(range(i, min(i + CHUNK, len(ds)))) for i in range(0, len(ds), CHUNK)]
    loader = torch.utils.data.DataLoader(ds, batch_size=None, sampler=chunks, num_workers=workers)
    bar = Progress(total=len(ds), desc="prepare", unit="img", enabled=progress)
    try:
        for idx, (x, _) in zip(chunks, loader):
            arr[idx[0]: idx[-1] + 1] = x.numpy()
            bar.update(len(idx))
    except DataError as e:  # from a worker, the message carries the worker's traceback: keep its last line
        last = [ln for ln in str(e).strip().splitlines() if ln.strip()][-1]
        raise DataError(last.split("DataError: ", 1)[-1]) from None
    finally:
        bar.close()


def open_array(path: Union[str, Path]) -> np.ndarray:
    """The prepared ``[N, C, H, W]`` uint8 array at ``path``, memory-mapped read-only."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"prepared array not found: {path} (make it with: flowvae prepare --data FOLDER --out {path})")
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"{path} is not a readable .npy array ({e}); prepare it again with flowvae prepare") from None
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise DataError(f"{path} holds a {arr.dtype} array of shape {list(arr.shape)}; data.dataset=array needs uint8 "
                        f"images [N, C, H, W] with C = 1 or 3 (what flowvae prepare writes)")
    return arr


class ArrayImages(Dataset):
    """Images of a prepared array (memory-mapped), a subset of its rows; indexable by a batch of indices."""

    in_memory = True  # batches are gathered in this process: no decode, no worker processes

    def __init__(self, array: np.ndarray, labels: np.ndarray, rows: np.ndarray, name: str):
        self.array, self.all_labels, self.rows, self.name = array, labels, rows, name

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, idx):
        rows = self.rows[np.asarray(idx, dtype=np.int64)]
        if rows.ndim == 0:
            return torch.from_numpy(np.array(self.array[rows])), int(self.all_labels[rows])
        order = np.argsort(rows, kind="stable")  # read the file in order, then put the batch back in place
        x = np.empty((len(rows), *self.array.shape[1:]), dtype=np.uint8)
        x[order] = self.array[rows[order]]
        return torch.from_numpy(x), torch.from_numpy(self.all_labels[rows].astype(np.int64))

    def take(self, n: int) -> "ArrayImages":
        return ArrayImages(self.array, self.all_labels, self.rows[:n], self.name)

    @property
    def labels(self) -> Tensor:
        return torch.from_numpy(self.all_labels[self.rows].astype(np.int64))

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape[1:])


def load_array(root: str, split: str, test_fraction: float, image_size: int = 0) -> ArrayImages:
    """``data.dataset=array``: a prepared .npy file (split like a folder) or a directory with train.npy and test.npy."""
    if not root:
        raise DataError("data.dataset=array needs data.root=PATH.npy (made by flowvae prepare), or a directory "
                        "holding train.npy and test.npy")
    path = Path(root).expanduser()
    if path.is_dir():
        path = path / f"{split}.npy"
        if not path.is_file():
            raise DataError(f"data.root {root} is a directory without {split}.npy; prepare each split "
                            f"(flowvae prepare --data FOLDER/{split} --out {path}) or point data.root at one .npy file")
        arr, rows = open_array(path), None
    else:
        arr = open_array(path)
        rows = split_indices(arr.shape[0], test_fraction, split)
    rows = np.arange(arr.shape[0]) if rows is None else np.asarray(rows, dtype=np.int64)
    if image_size and tuple(arr.shape[2:]) != (image_size, image_size):
        raise DataError(f"{path} was prepared at {arr.shape[2]}x{arr.shape[3]}, data.image_size asks {image_size}: "
                        f"prepare it again with --size {image_size}, or drop data.image_size")
    lp = labels_path(path)
    labels = np.load(lp, allow_pickle=False) if lp.is_file() else np.zeros(arr.shape[0], dtype=np.int64)
    if labels.shape != (arr.shape[0],):
        raise DataError(f"{lp} holds {labels.shape[0] if labels.ndim else 0} labels for {arr.shape[0]} images; prepare again")
    return ArrayImages(arr, labels, rows, f"array {path} ({split})")
