"""Datasets (uint8 images, local files first) and batch iteration."""
from .datasets import iterate_batches, list_images, load_dataset, read_idx, read_image_files
from .errors import DataError
from .images import read_image

__all__ = ["DataError", "iterate_batches", "list_images", "load_dataset", "read_idx", "read_image", "read_image_files"]
