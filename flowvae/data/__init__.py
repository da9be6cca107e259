"""Datasets (uint8 images, local files first) and batch iteration."""
from .datasets import DataError, iterate_batches, load_dataset, read_idx

__all__ = ["DataError", "iterate_batches", "load_dataset", "read_idx"]
