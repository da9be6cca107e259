"""Argument checks shared by the public API (model, uses): counts, numbers, flags and tensors, with numpy
scalars and 0-d tensors accepted, and a message that names the argument and what to pass."""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

# The importance-weighted bound's most draws per image: the bound moves little past a few thousand (Burda,
# Grosse and Salakhutdinov, "Importance Weighted Autoencoders", report k=5000), while each draw is one pass
# of the whole model, so a larger k is a typo or hours of work per image.
MAX_IW_DRAWS = 100_000
SAMPLE_BATCH = 256  # images per decode in sample(): a fixed size, so one seed gives the same images anywhere


# ------------------------------------------------------------------ argument checks
def _as_scalar(value, name: str):
    """The Python scalar inside a numpy scalar, a 0-d numpy array or a 0-d tensor; other values as they are."""
    if getattr(value, "shape", None) != () or not hasattr(value, "item"):
        return value
    if isinstance(value, Tensor) and value.is_meta:
        raise ValueError(f"{name} is a tensor on the meta device, which holds no value; pass a number")
    return value.item()


def check_count(value, name: str, minimum: Optional[int] = 1) -> int:
    """``value`` as a Python int >= ``minimum`` (None: any int): ints, numpy integers and 0-d integer tensors
    pass; bools, floats (even 4.0) and anything else are refused, naming ``name``."""
    v = _as_scalar(value, name)
    if isinstance(v, bool) or not isinstance(v, int) or (minimum is not None and v < minimum):
        bound = "" if minimum is None else f">= {minimum} and "
        raise ValueError(f"{name} must be {bound}an integer, got {value!r}")
    return v


def check_number(value, name: str, minimum: float = 0.0, strict: bool = False, hint: str = "") -> float:
    """``value`` as a finite Python float >= ``minimum`` (> with ``strict``): ints, floats, numpy numbers and
    0-d tensors pass; bools and anything else are refused, naming ``name``."""
    v = _as_scalar(value, name)
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
    if not ok or v < minimum or (strict and v == minimum):
        raise ValueError(f"{name} must be a finite number {'>' if strict else '>='} {minimum:g}{hint}, got {value!r}")
    return float(v)


def check_flag(value, name: str) -> bool:
    """``value`` as a Python bool: True/False, a numpy bool or a 0-d bool tensor."""
    v = _as_scalar(value, name)
    if not isinstance(v, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return v


def check_draws(k, name: str = "k") -> int:
    """A number of draws per image (the bound's k) as an int in 1..MAX_IW_DRAWS."""
    k = check_count(k, name)
    if k > MAX_IW_DRAWS:
        raise ValueError(f"{name}={k:,} draws per image is more than flowvae allows ({MAX_IW_DRAWS:,}): each draw "
                         f"is a full pass of the model, and the bound moves little past a few thousand")
    return k


def check_dense(t: Tensor, name: str) -> None:
    """Refuse tensors that hold no values here (meta) or are not plain dense arrays (sparse, ...)."""
    if t.is_meta:
        raise ValueError(f"{name} is on the meta device: it has a shape but no values; pass real data")
    if t.layout != torch.strided:
        raise ValueError(f"{name} is a {str(t.layout).replace('torch.', '')} tensor; pass a dense one ({name}.to_dense())")
