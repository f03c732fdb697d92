"""Encoded bytes → RGB pixels, robustly.

``open_image`` parses the header only, so that the transform can choose its crop first and let
``decode_region`` decode a JPEG at reduced scale (libjpeg's DCT scaling, PIL ``draft``) when the crop
stays at least as large as the output. Whatever cannot be used raises ``SkipSample`` with a reason:
zero bytes (``empty``), not an image (``not_an_image``), data ending early (``truncated``), decoder
failures (``corrupt``), more pixels than the limit (``too_large``, decompression bombs; PIL's
global limit is never changed) or a pixel format without an RGB meaning (``unsupported_mode``).

Conversions: EXIF orientation is applied (sizes and crops are in displayed orientation); gray,
palette, CMYK, YCbCr, LAB → RGB; alpha (RGBA, LA, palette transparency) is composited onto white;
16-bit images keep their high byte (as PIL does for 16-bit RGB PNGs); 32-bit ``I`` is read as
16-bit and clipped; float ``F`` is clipped to [0, 255].
"""

from __future__ import annotations

import io
import math
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from beit_ds.data.skips import SkipSample

EXIF_ORIENTATION = 0x0112
# EXIF orientation → the transpose that displays the image upright (the EXIF specification's table).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_ALPHA = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass
class EncodedImage:
    """An image whose header was read: ``size`` (W, H) as displayed, after EXIF rotation."""

    image: Image.Image
    path: str
    orientation: int

    @property
    def size(self) -> tuple[int, int]:
        w, h = self.image.size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)


def open_image(data: bytes, path: str, max_pixels: int) -> EncodedImage:
    """Parse the header of ``data`` (read from ``path``); nothing is decoded yet."""
    if not data:
        raise SkipSample("empty", path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise SkipSample("too_large", f"{path}: {err}") from err
    except UnidentifiedImageError as err:
        raise SkipSample("not_an_image", path) from err
    except Exception as err:  # any parser failure means a broken header
        raise SkipSample("corrupt", f"{path}: {type(err).__name__}: {err}") from err
    w, h = image.size
    if w * h > max_pixels:
        raise SkipSample("too_large", f"{path}: {w}x{h} pixels > data.max_image_pixels={max_pixels}")
    if w == 0 or h == 0:
        raise SkipSample("corrupt", f"{path}: zero-sized image {w}x{h}")
    try:
        orientation = int(image.getexif().get(EXIF_ORIENTATION, 1))
    except Exception:  # a broken EXIF block only loses the rotation
        orientation = 1
    return EncodedImage(image, path, orientation if orientation in _TRANSPOSE else 1)


def decode(enc: EncodedImage, reduce: float = 1.0) -> tuple[Image.Image, float]:
    """Decode to an upright RGB image, optionally shrunk by up to ``reduce`` (≥ 1; JPEG only).

    Returns the image and its scale relative to ``enc.size`` (1, 1/2, 1/4 or 1/8).
    """
    image, scale = enc.image, 1.0
    if reduce >= 2.0:
        w, h = image.size
        drafted = image.draft(None, (math.ceil(w / reduce), math.ceil(h / reduce)))
        if drafted is not None:
            scale = drafted[1][2] / w
    return to_rgb(load_upright(enc), enc.path), scale


def load_upright(enc: EncodedImage) -> Image.Image:
    """Decode ``enc.image`` (at the draft scale chosen, if any) upright, in its own pixel mode."""
    image = enc.image
    try:
        image.load()
    except Image.DecompressionBombError as err:
        raise SkipSample("too_large", f"{enc.path}: {err}") from err
    except OSError as err:
        reason = "truncated" if "truncated" in str(err) else "corrupt"
        raise SkipSample(reason, f"{enc.path}: {err}") from err
    except Exception as err:  # decoders raise many types on broken data
        raise SkipSample("corrupt", f"{enc.path}: {type(err).__name__}: {err}") from err
    if enc.orientation in _TRANSPOSE:
        image = image.transpose(_TRANSPOSE[enc.orientation])
    return image


def to_rgb(image: Image.Image, path: str = "") -> Image.Image:
    """``image`` as 8-bit RGB (see the module docstring for each mode)."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in _SIXTEEN_BIT:
        high = np.clip(np.asarray(image, dtype=np.int64), 0, 65535) >> 8
        return Image.fromarray(high.astype(np.uint8)).convert("RGB")
    if mode == "F":
        return Image.fromarray(np.clip(np.asarray(image), 0, 255).astype(np.uint8)).convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode == "L" and "transparency" in image.info:
        image = image.convert("LA")
    if image.mode in _ALPHA:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as err:
        raise SkipSample("unsupported_mode", f"{path}: mode {mode}") from err


LABEL_MODES = ("L", "P", "1", *_SIXTEEN_BIT)


def decode_label(enc: EncodedImage) -> np.ndarray:
    """A label map's class indices: [H, W] uint8 (``L``, ``P``: the palette index, ``1``) or int32
    (16-/32-bit); a multi-channel label file is ``unsupported_mode``."""
    if enc.image.mode not in LABEL_MODES:
        detail = (
            f"{enc.path}: label map mode {enc.image.mode}, expected one channel of class indices (L, P, I;16)"
        )
        raise SkipSample("unsupported_mode", detail)
    image = load_upright(enc)
    dtype = np.uint8 if image.mode in ("L", "P", "1") else np.int32
    return np.asarray(image, dtype=dtype)
