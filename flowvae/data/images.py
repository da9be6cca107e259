"""Reading one image file as uint8 [C, H, W]: every PIL mode is either converted exactly or refused by name.

PIL's ``convert('L')`` clips 16-bit greyscale to 255 instead of scaling it, and ``convert('RGB')`` drops an
alpha channel whatever it hides. So each mode goes through a small table first:

- 8-bit 'L' and 'RGB' are read as they are; '1' becomes 0/255; 'RGBX', 'CMYK' and 'YCbCr' become RGB.
- 16-bit greyscale ('I;16' and its byte orders; 'I' as PNG and PGM/PPM decode it) is scaled to 8 bits,
  round(v * 255 / 65535): 32896 -> 128, 65535 -> 255.
- Palette ('P', 'PA') images take their palette colours.
- Alpha ('LA', 'RGBA', 'PA', a transparency key): a fully opaque image drops the channel; an image with any
  transparent pixel is refused, naming the file, since what lies under a transparent pixel is undefined.
- Other modes (32-bit integer TIFF 'I', float 'F', 'LAB', 'HSV', ...) are refused, naming the file and mode.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .errors import DataError

# Formats whose decoder yields mode 'I' only for 16-bit data (PIL scales PGM/PPM maxvals to 0..65535).
_SIXTEEN_BIT_I_FORMATS = ("PNG", "PPM")


def _refuse(path, im, why: str) -> DataError:
    return DataError(f"cannot use image {path}: mode {im.mode} ({why}). Convert it to 8-bit greyscale (L) or RGB, "
                     f"or remove it.")


def _scale_16bit(im, path):
    from PIL import Image

    a = np.asarray(im).astype(np.int64)
    if a.size and (a.min() < 0 or a.max() > 65535):
        raise _refuse(path, im, f"values {a.min()}..{a.max()} outside the 16-bit range 0..65535")
    return Image.fromarray(((a * 255 + 32767) // 65535).astype(np.uint8), "L")


def _int32(im, path):
    if im.format in _SIXTEEN_BIT_I_FORMATS:  # a 16-bit greyscale PNG or PGM that PIL decoded as 'I'
        return _scale_16bit(im, path)
    raise _refuse(path, im, f"32-bit integer pixels in a {im.format or 'file'} file: no known scale to 8 bits")


def _opaque(im, path):
    """LA or RGBA -> L or RGB when every pixel is opaque; otherwise refuse."""
    alpha = np.asarray(im.getchannel("A"))
    clear = int((alpha < 255).sum())
    if clear:
        raise _refuse(path, im, f"{clear} of {alpha.size} pixels are transparent or partly transparent, so their "
                                f"colour is undefined; flatten it onto a background first")
    return im.convert("L" if im.mode == "LA" else "RGB")


def _via(mode: str, then: Optional[Callable] = None):
    def convert(im, path):
        out = im.convert(mode)
        return then(out, path) if then else out
    return convert


# mode -> function(image, path) giving an 8-bit 'L' or 'RGB' image with the same pixels
_TO_8BIT: dict[str, Callable] = {
    "L": lambda im, path: im,
    "RGB": lambda im, path: im,
    "1": _via("L"),
    "RGBX": _via("RGB"),
    "CMYK": _via("RGB"),
    "YCbCr": _via("RGB"),
    "P": _via("RGBA", _opaque),
    "PA": _via("RGBA", _opaque),
    "LA": _opaque,
    "La": _via("LA", _opaque),
    "RGBA": _opaque,
    "RGBa": _via("RGBA", _opaque),
    "I;16": _scale_16bit,
    "I;16L": _scale_16bit,
    "I;16B": _scale_16bit,
    "I;16N": _scale_16bit,
    "I": _int32,
}
_KEYED = {"L": "LA", "RGB": "RGBA"}  # modes whose transparency key ('transparency' in info) means an alpha channel


def to_8bit(im, path):
    """``im`` (a PIL image) as an 8-bit 'L' or 'RGB' image with the same pixel values, or a DataError naming
    ``path`` and the mode."""
    mode = im.mode
    if mode in _KEYED and "transparency" in im.info:
        return _opaque(im.convert(_KEYED[mode]), path)
    convert = _TO_8BIT.get(mode)
    if convert is None:
        raise _refuse(path, im, "not a mode this loader converts exactly")
    return convert(im, path)


def _open_8bit(path):
    """The decoded image at ``path`` as 8-bit 'L' or 'RGB' (see ``to_8bit``); a DataError names a file PIL
    cannot decode."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            return to_8bit(im, path)
    except DataError:
        raise
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError, DecompressionBombError, ...
        raise DataError(f"cannot read image {path} ({type(e).__name__}: {str(e).strip()[:200]}). "
                        f"Remove or replace the file.") from None


def read_image(path, channels: int, size: Optional[tuple[int, int]] = None,
               center_crop: Optional[int] = None) -> Tensor:
    """One image file as uint8 [channels, H, W]: converted to 8 bits (see the module docstring), then to
    greyscale (ITU-R 601 luma) or RGB, centre-cropped to ``center_crop`` and resized (bicubic) to ``size``
    (H, W) when given. A file PIL cannot decode raises a DataError naming it."""
    from PIL import Image

    im = _open_8bit(path).convert("L" if channels == 1 else "RGB")
    if center_crop:
        w, h = im.size
        c = center_crop
        im = im.crop(((w - c) // 2, (h - c) // 2, (w - c) // 2 + c, (h - c) // 2 + c))
    if size is not None and tuple(im.size[::-1]) != tuple(size):
        im = im.resize((size[1], size[0]), Image.BICUBIC)
    t = torch.from_numpy(np.array(im, dtype=np.uint8))
    return t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1).contiguous()


def image_size(path) -> tuple[int, int]:
    """(H, W) of an image file, after checking that the whole file decodes and its mode converts (so a
    corrupt or unusable file is found up front). Raises a DataError naming the file."""
    w, h = _open_8bit(Path(path)).size
    return h, w
