"""Datasets (uint8 images, local files first), batch iteration, and folders decoded once into an array."""
from .datasets import DataError, iterate_batches, load_dataset, read_idx
from .prepare import ArrayImages, prepare_folder

__all__ = ["ArrayImages", "DataError", "iterate_batches", "load_dataset", "prepare_folder", "read_idx"]
