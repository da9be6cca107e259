"""Models trained by flowvae's own commands and shipped inside the package.

``load_checkpoint("pretrained:fashion_mnist")`` and ``--checkpoint pretrained:fashion_mnist`` on the CLI
load them; ``flowvae pretrained`` lists them. Each is the weights and config of a run, written by
``scripts/export_pretrained.py``; ``<name>.json`` beside it holds what it is for, the command that trained
it, and its metrics on the full test set.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

PREFIX = "pretrained:"
HERE = Path(__file__).resolve().parent

# Names that were shipped by earlier versions: what to use instead.
RETIRED = {
    "fashion_mnist_v2": "it was superseded by pretrained:fashion_mnist, the same flow with bounded couplings "
                        "(a bound that no longer depends on the noise draw)",
    "fashion_mnist_hier": "it was retrained as pretrained:fashion_mnist_hierarchical_small, the same recipe with "
                          "soft-bounded coupling shifts and a base with linear tails (4.2489 against 4.4286 bits/dim, "
                          "and a bound that depends far less on the noise draw)",
    "fashion_mnist_codes": "it was superseded by pretrained:fashion_mnist, which has both a lower bound and a "
                           "stronger swap",
}


def available() -> list[str]:
    return sorted(p.stem for p in HERE.glob("*.pt"))


def info(name: str) -> dict:
    """What ``<name>.json`` says of a shipped model: description, trained_by, step, train_minutes, metrics."""
    return json.loads((HERE / f"{name}.json").read_text())


def is_pretrained(path: Union[str, Path]) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


def resolve(path: Union[str, Path]) -> Path:
    """``pretrained:NAME`` -> the shipped file; any other path is returned as a Path."""
    if not is_pretrained(path):
        return Path(path)
    name = path[len(PREFIX):]
    file = HERE / f"{name}.pt"
    if not file.is_file():
        if name in RETIRED:
            raise FileNotFoundError(f"pretrained:{name} is no longer shipped: {RETIRED[name]}")
        have = ", ".join(PREFIX + n for n in available()) or "none in this installation"
        raise FileNotFoundError(f"no pretrained model {name!r}; available: {have} (flowvae pretrained lists them)")
    return file
