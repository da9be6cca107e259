"""Prepared image arrays: a folder decoded once by ``flowvae prepare`` into a uint8 ``.npy``
(``[N, C, H, W]``, labels beside it), read through a memory map (``data.dataset=array``)."""
from __future__ import annotations

from pathlib import Path
from typing import Union

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError


def labels_path(path: Path) -> Path:
    return path.with_name(path.name[: -len(".npy")] + ".labels.npy")


def split_indices(n: int, test_fraction: float, split: str) -> list[int]:
    """The images of ``split`` among ``n`` in a folder without train/ and test/ (and in a prepared array of it):
    a fixed permutation, independent of the training seed, whose first ``test_fraction`` are the test set."""
    g = torch.Generator().manual_seed(1234)
    perm = torch.randperm(n, generator=g).tolist()
    n_test = max(1, int(round(test_fraction * n)))
    return perm[:n_test] if split == "test" else perm[n_test:]


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
