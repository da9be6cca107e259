"""Datasets (uint8 images, local files first), batch iteration, and folders decoded once into an array."""
from .datasets import iterate_batches, list_images, load_dataset, read_idx, read_image_files
from .errors import DataError
from .images import read_image
from .arrays import ArrayImages
from .prepare import prepare_folder

__all__ = ["ArrayImages", "DataError", "iterate_batches", "list_images", "load_dataset", "prepare_folder", "read_idx",
           "read_image", "read_image_files"]
