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

from .arrays import labels_path
from .datasets import FileImages, list_images
from .errors import DataError

CHUNK = 256  # images decoded per DataLoader item


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
