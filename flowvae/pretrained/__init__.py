"""Models trained by flowvae's own scripts and shipped inside the package.

``load_checkpoint("pretrained:fashion_mnist")`` and ``--checkpoint pretrained:fashion_mnist`` on the
CLI load them. Each is the EMA weights and config of a run, written by ``scripts/export_pretrained.py``;
its metrics sit beside it in ``<name>.json``, and how it was trained in the README ("Pretrained model").
"""
from __future__ import annotations

from pathlib import Path
from typing import Union

PREFIX = "pretrained:"
HERE = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.pt"))


def is_pretrained(path: Union[str, Path]) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def resolve(path: Union[str, Path]) -> Path:
    """``pretrained:NAME`` -> the shipped file; any other path is returned as a Path."""
    if not is_pretrained(path):
        return Path(path)
    name = path[len(PREFIX):]
    file = HERE / f"{name}.pt"
    if not file.is_file():
        have = ", ".join(PREFIX + n for n in available()) or "none in this installation"
        raise FileNotFoundError(f"no pretrained model {name!r}; available: {have}")
    return file
