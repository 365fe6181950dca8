"""Decoding and limits: bytes -> grey (and alpha) float32 arrays of at most WORK_SIZE a side.

Only the formats we accept are opened; the declared size and the container's own work
estimate (``limits``) are checked before any pixel is decoded; JPEGs decode straight to grey
at a reduced scale, everything else is shrunk strip by strip before any colour conversion,
so a worker never holds more than the decoded image plus one strip.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from server.imaging import limits
from server.imaging.errors import ImageError, ImageTooLarge, InvalidImage, UnsupportedFormat

# Pillow's format names. Phones' multi-picture JPEGs come out of the JPEG plugin as "MPO".
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Longest side images are reduced to before the float stages: plenty for a 20x20 result
# (a digit a third of the picture's height is still ~100 pixels), and it bounds memory and
# time. Measured against 512 with bench/uploads.py: the same accuracy within 0.2 points, and
# a 400x300 JPEG photo decodes at half scale, 1.6x cheaper end to end.
WORK_SIZE = 320
# Rows converted at a time when shrinking (a multiple of the reduction factor): bounds the
# memory of colour conversion to a strip rather than a second full-size image.
STRIP_ROWS = 256

# Containers Pillow cannot read but that users upload; answered "unsupported", not "invalid".
_FOREIGN_SIGNATURES = (
    (4, b"ftypheic"), (4, b"ftypheix"), (4, b"ftypmif1"), (4, b"ftypmsf1"), (4, b"ftypheif"),
    (4, b"ftypavif"), (0, b"%PDF"), (0, b"<svg"), (0, b"<?xml"),
)

# Pillow warns about decompression bombs from inside Image.open, before we can look at the
# size; our own, lower limit is checked right after from the declared size, before any pixel
# is decoded. One process-wide filter: warnings.catch_warnings() is not thread-safe.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)
# Pillow keeps a PNG's decompressed text chunks in memory, up to 64 MB by default: on top of a
# 160 MB decoded image that would pass our 200 MB budget. Text is of no use to us.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024


def decode(data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]]:
    """Grey levels and alpha (or None) as float32 arrays in [0, 1], at most WORK_SIZE a side,
    and the (width, height) of the upright original they were reduced from."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise InvalidImage("The upload is empty: send a PNG, JPEG, GIF, BMP, WebP or TIFF image.")
    data = bytes(data)
    for offset, magic in _FOREIGN_SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            raise UnsupportedFormat()
    limits.check_bytes(data)
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # the warning arrives as an exception where warnings are errors (python -W error,
        # pytest's filterwarnings): Pillow's threshold, 89 MP, is past any sane max_pixels
        raise ImageTooLarge(max_pixels) from exc
    except UnidentifiedImageError:
        raise _unidentified(data) from None
    except Exception as exc:  # a broken header can raise almost anything inside a plugin
        raise InvalidImage() from exc
    try:
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidImage()
        if width * height > max_pixels:
            raise ImageTooLarge(max_pixels)
        limits.check_opened(im, data)
        _draft(im)
        im.load()
        im = _orient(im)
        return (*_to_arrays(im), im.size)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(max_pixels) from exc
    except Exception as exc:  # truncated or corrupt pixel data
        raise InvalidImage() from exc


def _unidentified(data: bytes) -> ImageError:
    """Unsupported when Pillow knows the format but we don't accept it, else invalid."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            other.format  # noqa: B018 - opened: some image format, just not one of ours
    except Exception:
        return InvalidImage()
    return UnsupportedFormat()


def _draft(im: Image.Image) -> None:
    """Let libjpeg decode JPEGs straight to grey, and big ones at 1/2, 1/4 or 1/8 scale.

    Far faster and the same for us: a JPEG stores luma with the weights Pillow's "L" uses, so
    this skips a colour conversion there and back.
    """
    if im.format in ("JPEG", "MPO"):
        # the size _to_arrays reduces to: libjpeg then scales by the largest factor that
        # stays at or above it, and _to_arrays does the rest
        factor = -(-max(im.size) // WORK_SIZE)
        im.draft("L", (-(-im.size[0] // factor), -(-im.size[1] // factor)) if factor > 1 else None)


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a damaged EXIF block is ignored, not an error."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def _shrink(im: Image.Image, factor: int, convert) -> Image.Image:
    """``convert(im).reduce(factor)``, a strip of rows at a time: colour conversion never
    makes a second full-size image (a 40 MP RGBA PNG would need 160 MB more for it)."""
    if factor == 1:
        return convert(im)
    width, height = im.size
    rows = factor * max(1, STRIP_ROWS // factor)
    out = None
    for top in range(0, height, rows):
        part = convert(im.crop((0, top, width, min(top + rows, height)))).reduce(factor)
        if out is None:
            out = Image.new(part.mode, (-(-width // factor), -(-height // factor)))
        out.paste(part, (0, top // factor))
    return out


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    factor = -(-max(im.size) // WORK_SIZE)  # ceil: the result is at most WORK_SIZE
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        deep = _shrink(im, factor, lambda part: part if part.mode == "F" else part.convert("I"))
        return _scale_deep(np.asarray(deep, dtype=np.float64)), None
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or im.has_transparency_data
    if has_alpha:
        both = _shrink(im, factor, lambda part: part.convert("RGBA"))
        gray, alpha = both.convert("L"), both.getchannel("A")
    else:
        alpha = None
        gray = _shrink(im, factor, lambda part: part if part.mode == "L" else
                       part.convert("L") if part.mode == "1" else part.convert("RGB").convert("L"))
    gray_array = np.asarray(gray, dtype=np.float32)  # a converted copy: ours to scale
    gray_array /= np.float32(255)
    if alpha is None:
        return gray_array, None
    alpha_array = np.asarray(alpha, dtype=np.float32) / np.float32(255)
    if alpha_array.min() >= 0.99:  # opaque after all
        return gray_array, None
    return gray_array, alpha_array


def _scale_deep(array: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float pixels to [0, 1], guessing the range from the values."""
    array = np.nan_to_num(array)
    high = float(array.max()) if array.size else 0.0
    low = float(array.min()) if array.size else 0.0
    if low >= 0 and high <= 1:
        return array.astype(np.float32)
    if low >= 0 and high <= 255:
        return (array / 255.0).astype(np.float32)
    if low >= 0 and high <= 65535:
        return (array / 65535.0).astype(np.float32)
    return ((array - low) / max(high - low, 1e-12)).astype(np.float32)
