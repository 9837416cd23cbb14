"""Decoding an image file to an RGB PIL image, or a DataError naming the file.

Grayscale, CMYK, RGBA, palette and 16-bit images are converted, not refused (COCO holds a
few hundred grayscale images). Alpha is dropped, as `Image.convert("RGB")` in the Q2L/ASL
loaders does. A camera's EXIF orientation is applied (`ImageOps.exif_transpose`), so a photo
is seen upright, as a viewer shows it, in training, evaluation and predict alike (this is the
one place images are decoded); an image without that tag is left exactly as it is.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mlic.errors import DataError
from mlic.safeload import open_regular

# What PIL raises for a file that is missing, truncated, not an image, or absurdly large.
DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> "RGB" (8 bits per channel)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        # 16-bit or float grayscale: PIL's convert would clip at 255; rescale to 0-255 first.
        values = np.asarray(image, dtype=np.float32)
        top = 65535.0 if image.mode != "F" else max(float(values.max()), 1e-12)
        if image.mode == "I" and values.max() <= 255:
            top = 255.0
        gray = np.clip(values * (255.0 / top), 0, 255).round().astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        # PIL warns when a palette image with transparency goes straight to RGB.
        image = image.convert("RGBA")
    return image.convert("RGB")


def _upright(image: Image.Image) -> None:
    """Apply the EXIF orientation in place (nothing without the tag). A damaged EXIF block
    leaves the pixels as stored: the orientation is metadata, the pixels decoded fine."""
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (*DECODE_ERRORS, KeyError, TypeError, IndexError, struct.error):
        pass


def open_rgb(path: str | Path) -> Image.Image:
    """Fully decode `path` (so truncation is detected here, not later) and convert to RGB."""
    try:
        # We own the file object, so it is closed on every path (Pillow leaves multi-frame
        # files open after load()); the decoded pixels stay in memory. Only regular files are
        # opened: a FIFO would block the loader forever.
        with open_regular(path) as handle:
            image = Image.open(handle)
            image.load()
            _upright(image)
            return to_rgb(image)
    except FileNotFoundError:  # pragma: no cover - open_regular reports it
        raise DataError(f"{path}: image file not found") from None
    except UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (no known image format)") from None
    except DECODE_ERRORS as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode image ({reason})") from None
