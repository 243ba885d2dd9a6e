"""Decoding image files to RGB, with clear reasons for the ones that cannot be (torch-free; also copied into
deploy bundles, so a device reads images exactly as the build did)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgetl.errors import DataError

# Modes whose pixels carry transparency; they are flattened onto white rather than having alpha dropped,
# because dropping alpha exposes whatever (often black) colour the encoder stored under transparent pixels.
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})

class _BadImageError(Exception):
    """Internal: an image cannot be decoded; carries a short human-readable reason."""


def load_rgb(path: str | Path, advice: str = " Fix or replace the file, or remove it from the dataset.") -> Image.Image:
    """Open an image file, fully decode it, return it in RGB (else a DataError: the file, the reason, `advice`)."""
    try:
        return _decode(path)[1]
    except _BadImageError as exc:
        raise DataError(f"Cannot read image {path}: {exc}.{advice}") from None


def to_rgb(image: Image.Image) -> Image.Image:
    """A Pillow image in RGB (transparency flattened onto white, high bit depths scaled), as files are, held to the
    same pixel and aspect limits (an image opened but not yet decoded is checked before it is decoded)."""
    try:
        _check_pixel_limit(image)
        return _to_rgb(image)
    except _BadImageError as exc:
        raise DataError(f"Cannot use the {image.mode} image: {exc}.") from None


def check_image(path: str) -> tuple[str | None, str | None]:
    """Fully decode one image; return (original_mode, None) if fine or (None, reason) if bad."""
    try:
        return _decode(path)[0], None
    except _BadImageError as exc:
        return None, str(exc)


def _decode(path: str | Path) -> tuple[str, Image.Image]:
    """Decode `path` to RGB and return (original mode, RGB image); raise _BadImageError with a reason otherwise."""
    _check_not_empty(path)
    try:
        # The context manager closes the file even when decoding fails halfway; the RGB result is a new image
        # created inside the block, so nothing returned still refers to the file.
        with Image.open(path) as im:
            _check_pixel_limit(im)
            im.load()  # full decode: verify() alone does not notice a truncated JPEG
            return im.mode, _to_rgb(im)
    except _BadImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise _BadImageError(f"decompression bomb refused by Pillow ({exc})") from None
    except UnidentifiedImageError:
        raise _BadImageError("not an image Pillow can read (unrecognised or corrupt header)") from None
    except FileNotFoundError:
        raise _BadImageError("file not found (deleted during the scan, or a broken symlink)") from None
    except PermissionError:
        raise _BadImageError("permission denied") from None
    except Exception as exc:  # Pillow's plugins raise many exception types on malformed input
        raise _BadImageError(f"truncated or corrupt image data ({type(exc).__name__}: {exc})") from exc


def _check_not_empty(path: str | Path) -> None:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _BadImageError("file not found (deleted during the scan, or a broken symlink)") from None
    except OSError as exc:
        raise _BadImageError(f"cannot stat file ({exc.strerror or exc})") from None
    if not stat.S_ISREG(info.st_mode):  # a pipe or device: opening it could block forever or never end
        raise _BadImageError("not a regular file (a named pipe, socket or device)")
    if info.st_size == 0:
        raise _BadImageError("empty file (0 bytes)")


# Preprocessing resizes the shorter side to about 256 pixels before cropping: a 1×10000 strip would become
# 256×2,560,000 (2.7 GB). No photo is this elongated (a 360° panorama is about 8:1).
MAX_ASPECT_RATIO = 50


def _check_pixel_limit(im: Image.Image) -> None:
    """Refuse images over Image.MAX_IMAGE_PIXELS (read at call time so a caller's setting is respected), and strips
    more than MAX_ASPECT_RATIO times as long as they are wide."""
    if max(im.size) > MAX_ASPECT_RATIO * max(1, min(im.size)):
        raise _BadImageError(f"{im.width}x{im.height} pixels is more than {MAX_ASPECT_RATIO}:1, not a photo edgetl can "
                             "resize and crop (its shorter side resized to the model's input would make a strip over "
                             f"{MAX_ASPECT_RATIO} times as long)")
    # Pillow itself only raises above twice the limit and merely warns above it; catching that warning would need
    # warnings.catch_warnings, which is not thread-safe, so the limit is enforced here instead.
    limit = Image.MAX_IMAGE_PIXELS
    pixels = im.width * im.height
    if limit is not None and pixels > limit:
        raise _BadImageError(f"decompression bomb refused: {im.width}x{im.height} = {pixels} pixels exceeds the "
                             f"limit of {limit} (PIL.Image.MAX_IMAGE_PIXELS)")


def _to_rgb(im: Image.Image) -> Image.Image:
    """Convert any decoded Pillow image to RGB, flattening transparency onto white."""
    if im.mode in _SIXTEEN_BIT_MODES or im.mode in ("I", "F"):
        return Image.fromarray(_gray_to_uint8(np.asarray(im))).convert("RGB")
    try:
        if im.mode in _ALPHA_MODES or "transparency" in im.info:
            return _flatten_on_white(im.convert("RGBA"))
        return im.convert("RGB")
    except ValueError as exc:
        raise _BadImageError(f"unsupported pixel mode {im.mode} ({exc})") from None


def _flatten_on_white(rgba: Image.Image) -> Image.Image:
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _gray_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Scale high-bit-depth gray to 8 bit by value range rather than clipping (clipping turns most pixels white)."""
    values = arr.astype(np.float64)
    if arr.dtype.kind == "u" and arr.dtype.itemsize == 2:
        scaled = values / 257.0  # exact map of 0..65535 onto 0..255
    elif arr.dtype.kind == "f" and values.size and values.min() >= 0.0 and values.max() <= 1.0:
        scaled = values * 255.0
    elif arr.dtype.kind == "i" and values.size and values.min() >= 0 and values.max() <= 65535:
        scaled = values / 257.0  # mode "I" usually holds 16-bit data (older Pillow opened 16-bit PNGs this way)
    else:
        scaled = _stretch(values)  # signed or wider data has no standard range: use the image's own
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _stretch(values: np.ndarray) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values)
    low, high = float(finite.min()), float(finite.max())
    if high <= low:
        return np.zeros_like(values)
    return (np.nan_to_num(values, nan=low, posinf=high, neginf=low) - low) * (255.0 / (high - low))
