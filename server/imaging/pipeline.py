"""``to_mnist``: an upload's bytes through the stages (decode, paper, pieces, normalise) to an
MNIST-like 28x28, with the two shortcuts: MNIST's own format returned as it is, and a first
look at half resolution. The stages and why they are so: docs/serving.md."""

from __future__ import annotations

import numpy as np

from models import arrays, framing
from server.imaging.decode import decode, decode_half
from server.imaging.errors import NoDigitFound
from server.imaging.normalise import (
    check_picture,
    crop_to_ink,
    digit_shaped,
    is_mnist_format,
    normalise,
)
from server.imaging.paper import composite, extract_ink
from server.imaging.pieces import keep_digit

# The digit is looked for at half resolution first in pictures of at least 2 * HALF_SIZE a
# side (JPEGs decoded straight at that scale by libjpeg): a quarter of the pixels go through
# the paper, ink and pieces stages (docs/benchmarks.md). It is found there when it spans at
# least MIN_SPAN pixels, 1.6 times the 20-pixel box: still more than one pixel per pixel of
# the box after area averaging. Smaller digits are looked for again at full resolution.
HALF_SIZE = 80
MIN_SPAN = 32
# A picture smaller than the digit's 20-pixel box (a low-resolution scan uploaded as it is,
# 8-16 px) is enlarged smoothly to SMALL_SIZE a side first, as it will be in the end: at its
# own size the paper stage's border band is most of the picture and neighbouring pixels
# differ by whole strokes, which it takes for noise (docs/benchmarks.md).
SMALL_SIZE = 64


def to_mnist(data: bytes, *, max_pixels: int = 40_000_000) -> np.ndarray:
    """Encoded image bytes -> float32 (28, 28) in [0, 1], ink bright on black like MNIST / 255.

    Raises InvalidImage, UnsupportedFormat, ImageTooLarge (more than ``max_pixels`` declared
    pixels, or more decoding work than such an image needs) or NoDigitFound, all ImageErrors.
    """
    half = decode_half(data, max_pixels, HALF_SIZE)  # a JPEG libjpeg decodes smaller for us
    crop = None if half is None else _digit_if_big(half)
    if crop is None:
        gray, alpha, size = decode(data, max_pixels)
        check_picture(size)
        if alpha is None and is_mnist_format(gray):
            return gray
        if alpha is not None:
            gray = composite(gray, alpha)
        gray = _enlarge_small(gray)
        if half is None and max(gray.shape) >= 2 * HALF_SIZE:
            crop = _digit_if_big(arrays.halve(gray))
        if crop is None:
            crop = crop_to_ink(keep_digit(*extract_ink(gray)))
    if not digit_shaped(crop):
        raise NoDigitFound()
    return normalise(crop)


def _enlarge_small(gray: np.ndarray) -> np.ndarray:
    """``gray`` enlarged (bilinear, aspect kept) to SMALL_SIZE on its long side when that is
    under the 20-pixel box; else as it is."""
    return framing.fit(gray, SMALL_SIZE) if max(gray.shape) < framing.BOX else gray


def _digit_if_big(half: np.ndarray) -> np.ndarray | None:
    """The digit's ink cropped to it, found in a picture at half resolution, if it spans at
    least MIN_SPAN pixels there; None when it is smaller (or too thin or faint to survive the
    halving): then it is looked for at full resolution."""
    try:
        crop = crop_to_ink(keep_digit(*extract_ink(half)))
    except NoDigitFound:
        return None
    return crop if max(crop.shape) >= MIN_SPAN else None


def ink_map(data: bytes, max_pixels: int) -> tuple[np.ndarray, bool, float]:
    """Decoded ink strength in [0, 1] (0 on paper), whether the paper is a framed sheet, and
    the size of one of its pixels in pixels of the upright original."""
    gray, alpha, (width, height) = decode(data, max_pixels)
    check_picture((width, height))
    if alpha is not None:
        gray = composite(gray, alpha)
    ink, framed = extract_ink(gray)
    return ink, framed, max(width / gray.shape[1], height / gray.shape[0])
