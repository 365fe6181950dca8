"""Decoding and limits: bytes -> grey (and alpha) float32 arrays of at most WORK_SIZE a side.

Only the formats we accept are opened; the declared size and the container's own work
estimate (``limits``) are checked before any pixel is decoded; JPEGs decode straight to grey
at a reduced scale, everything else is shrunk strip by strip before any colour conversion,
so a worker never holds more than the decoded image plus one strip.

Plain PNGs of at most WORK_SIZE a side and JPEGs without EXIF, XMP or ICC segments skip
Image.open, whose Python walk of the container costs more than decoding a small image:
their pixel data goes straight to Pillow's own decoders. ``decode_half`` decodes a
single-scan JPEG straight at half the scale, for the pipeline's first look.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from server.imaging import limits
from server.imaging.errors import ImageError, ImageTooLarge, InvalidImage, UnsupportedFormat

# Pillow's format names. Phones' multi-picture JPEGs come out of the JPEG plugin as "MPO".
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Longest side images are reduced to before the float stages: plenty for a 20x20 result
# (a digit a third of the picture's height is still ~100 pixels), and it bounds memory and
# time; 512 read no better and cost more (docs/benchmarks.md).
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
    simple = decode_plain(data, max_pixels)
    if simple is not None:
        return simple
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
        im, turned = _orient(im)
        return (*_to_arrays(im), (height, width) if turned else (width, height))
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:
        raise ImageTooLarge(max_pixels) from exc
    except Exception as exc:  # truncated or corrupt pixel data
        raise InvalidImage() from exc


# The simple files read without Image.open (whose Python walk of the container costs more than
# decoding a small image): Pillow's own pixel decoders, given the pixel data directly. Anything
# else, or anything unusual in these, takes the general path, which handles or refuses it.
# PNG colour types at 8 bits -> Pillow's mode (also the raw mode of the decoder).
_PNG_MODES = {0: "L", 2: "RGB", 4: "LA", 6: "RGBA"}
# Chunks a simple PNG may hold besides IHDR, IDAT and IEND, with the length Pillow's handler
# needs: nothing that changes pixels, transparency or orientation (tRNS, PLTE, eXIf, text
# with EXIF or XMP, animation) and nothing Pillow could refuse.
_PNG_HARMLESS = {b"gAMA": 4, b"sRGB": 1, b"pHYs": 9}
# JPEG frames libjpeg decodes like Pillow would here: baseline, extended, progressive Huffman.
_JPEG_SIMPLE_FRAMES = frozenset({0xC0, 0xC1, 0xC2})


def decode_half(data: bytes, max_pixels: int, smallest: int) -> np.ndarray | None:
    """Grey levels in [0, 1] at half the size ``decode`` gives, for a single-scan JPEG that
    libjpeg can decode straight at that scale (cheaper than decoding at the full one and
    halving), at least ``smallest`` on its long side; None for anything else (``decode``
    then reads it). Limits as in ``decode``.

    Single scan only: its blocks are decoded once, so decoding it again at the full scale
    when the half one is not enough costs little more; a progressive file may take the
    whole work budget, which must be spent once at most.
    """
    if not isinstance(data, bytes) or not data.startswith(b"\xff\xd8\xff"):
        return None
    if limits.check_jpeg(data)[1]:  # a coefficient buffer: more than one scan
        return None
    size = _simple_jpeg(data)
    limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
    if size is None or size[0] * size[1] > limit:
        return None
    scale = _jpeg_scale(size)
    full = (-(-size[0] // scale), -(-size[1] // scale))
    scale *= 2 * -(-max(full) // WORK_SIZE)  # the reduction _to_arrays adds, then halving
    half = (-(-size[0] // scale), -(-size[1] // scale))
    if scale not in (2, 4, 8) or max(half) < smallest:  # libjpeg's scales are 1/2, 1/4, 1/8
        return None
    try:
        im = Image.frombytes("L", half, data, "jpeg", ("L", "", scale, 0))
    except Exception:  # truncated or corrupt: decode says which error it is
        return None
    return np.divide(_pixels(im), np.float32(255))


def decode_plain(data: bytes,
                 max_pixels: int) -> tuple[np.ndarray, np.ndarray | None, tuple[int, int]] | None:
    """``decode``'s result for a plain PNG of at most WORK_SIZE a side or a JPEG without EXIF,
    XMP or ICC segments; None for anything else, which ``decode``'s general path then reads.
    For bytes ``limits.check_bytes`` accepted (``decode`` checks them first)."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        found = _simple_png(data)
        if found is None:
            return None
        mode, size, pixels = found
        if size[0] * size[1] > max_pixels or max(size) > WORK_SIZE:
            return None
        decoded, codec, args = size, "zip", (mode,)
    elif data.startswith(b"\xff\xd8\xff"):
        size = _simple_jpeg(data)
        limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)  # past Pillow's: refused
        if size is None or size[0] * size[1] > limit:
            return None
        scale = _jpeg_scale(size)  # what _draft makes libjpeg do: straight to grey, reduced
        mode, pixels, codec, args = "L", data, "jpeg", ("L", "", scale, 0)
        decoded = (-(-size[0] // scale), -(-size[1] // scale))
    else:
        return None
    try:
        im = Image.frombytes(mode, decoded, pixels, codec, args)
    except Exception:  # truncated or corrupt: the general path says which error it is
        return None
    if mode == "L" and max(decoded) <= WORK_SIZE:  # _to_arrays' conversion, and nothing else
        return np.divide(_pixels(im), np.float32(255)), None, size
    return (*_to_arrays(im), size)


def _simple_png(data: bytes) -> tuple[str, tuple[int, int], bytes] | None:
    """(mode, size, the concatenated IDAT data) of an 8-bit, non-interlaced, non-palette PNG
    with only harmless chunks and intact chunk checksums before its pixels; else None."""
    n = len(data)
    if n < 33 or data[12:16] != b"IHDR" or data[8:12] != b"\x00\x00\x00\x0d":
        return None
    if zlib.crc32(data[12:29]) != int.from_bytes(data[29:33], "big"):
        return None
    width, height, depth, colour, compression, filtering, interlace = struct.unpack(
        ">IIBBBBB", data[16:29])
    mode = _PNG_MODES.get(colour)
    if mode is None or depth != 8 or compression or filtering or interlace:
        return None
    if width == 0 or height == 0:
        return None
    pos, pixels, after_pixels = 33, [], False
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        end = pos + 12 + length
        if end > n:
            return None
        if kind == b"IDAT":
            if after_pixels:
                return None  # a second run of IDAT chunks
            pixels.append(data[pos + 8:end - 4])
        elif kind == b"IEND":
            return (mode, (width, height), b"".join(pixels)) if pixels else None
        elif _PNG_HARMLESS.get(kind) != length or zlib.crc32(data[pos + 4:end - 4]) != (
                int.from_bytes(data[end - 4:end], "big")):
            return None
        else:
            after_pixels = bool(pixels)
        pos = end
    return None


def _simple_jpeg(data: bytes) -> tuple[int, int] | None:
    """The (width, height) of an 8-bit grey or YCbCr JPEG whose segments before its first
    scan are only tables, a comment, JFIF and Adobe headers: no EXIF, XMP, ICC profile or
    multi-picture index (orientation could hide in them), nothing Pillow would refuse."""
    n, pos, size = len(data), 2, None
    while pos + 4 <= n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        if len(segment) != length - 2:
            return None
        if marker == 0xDA:
            return size
        if marker in _JPEG_SIMPLE_FRAMES:
            if size is not None or length < 8:
                return None
            precision, height, width, components = struct.unpack(">BHHB", segment[:6])
            if (precision != 8 or components not in (1, 3) or not width or not height
                    or len(segment) < 6 + 3 * components):
                return None
            size = (width, height)
        elif marker == 0xDB:  # Pillow refuses a table cut short
            while segment:
                table = 1 + (64 if segment[0] < 16 else 128)
                if len(segment) < table:
                    return None
                segment = segment[table:]
        elif marker == 0xE0:
            if segment.startswith(b"JFIF") and len(segment) < 7:
                return None
        elif marker == 0xEE:
            if segment.startswith(b"Adobe") and len(segment) < 7:
                return None
        elif marker not in (0xC4, 0xDD, 0xFE):  # Huffman tables, restart interval, comment
            return None
        pos += 2 + length
    return None


def _jpeg_scale(size: tuple[int, int]) -> int:
    """The scale libjpeg decodes at after ``_draft``: what Pillow's JPEG draft picks."""
    factor = -(-max(size) // WORK_SIZE)
    if factor == 1:
        return 1
    scale = min(size[0] // -(-size[0] // factor), size[1] // -(-size[1] // factor))
    return next(s for s in (8, 4, 2, 1) if scale >= s)


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


def _orient(im: Image.Image) -> tuple[Image.Image, bool]:
    """Apply the EXIF orientation tag (a damaged EXIF block is ignored, not an error); and
    whether that swapped width and height."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return im, False
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im), orientation >= 5
    return im, False


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
    # uint8 / float32 in float32, as converting then dividing would do, in one pass
    gray_array = np.divide(_pixels(gray), np.float32(255))
    if alpha is None:
        return gray_array, None
    alpha_array = np.divide(_pixels(alpha), np.float32(255))
    if alpha_array.min() >= 0.99:  # opaque after all
        return gray_array, None
    return gray_array, alpha_array


def _pixels(im: Image.Image) -> np.ndarray:
    """An 8-bit single-band image as a uint8 array (np.asarray's array interface, leaner)."""
    return np.frombuffer(im.tobytes(), dtype=np.uint8).reshape(im.height, im.width)


def _scale_deep(array: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float pixels to [0, 1], guessing the range from the values. NaN
    is 0, +inf the largest of 0 and the finite values, -inf the smallest."""
    finite = np.isfinite(array)
    if not finite.all():
        values = array[finite]
        array = np.nan_to_num(array, nan=0.0, posinf=values.max(initial=0.0),
                              neginf=values.min(initial=0.0))
    high = float(array.max()) if array.size else 0.0
    low = float(array.min()) if array.size else 0.0
    if low >= 0 and high <= 1:
        return array.astype(np.float32)
    if low >= 0 and high <= 255:
        return (array / 255.0).astype(np.float32)
    if low >= 0 and high <= 65535:
        return (array / 65535.0).astype(np.float32)
    # halved first: high - low of two extreme float64s would overflow to inf
    return ((array * 0.5 - low * 0.5) / max(high * 0.5 - low * 0.5, 1e-300)).astype(np.float32)
