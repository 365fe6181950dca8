"""Work limits read from the container before any pixel is decoded.

The declared pixel count bounds most decoders' work, but not all of it: a progressive JPEG
decodes every block once per scan (and any number of scans fits in a few bytes each), and a
TIFF's strip arrays can list the same pixels many times over. These checks count that work
from the headers, in time linear in the file, and refuse what goes beyond the budget.
"""

from __future__ import annotations

import re
import struct

from PIL import Image

from server.imaging.errors import ImageTooLarge, InvalidImage

# Blocks (8x8 coefficients of one component) libjpeg may decode, summed over the scans: well
# under a second of decoding, and more than a big progressive phone photo needs (libjpeg's
# default script visits each block a few times; docs/benchmarks.md).
MAX_JPEG_BLOCK_VISITS = 12_000_000
# A JPEG with more than one scan keeps every coefficient (2 bytes each) in memory.
MAX_JPEG_COEFFICIENT_BYTES = 150 * 1024 * 1024
# Marker segments walked: real files have a few dozen.
MAX_JPEG_SEGMENTS = 2000
# Pillow parses PNG chunks and GIF blocks in Python before and while decoding (a 5 MB file
# could hold millions; docs/benchmarks.md); real files have a few dozen.
MAX_PNG_CHUNKS = 10_000
MAX_GIF_BLOCKS = 10_000
# Pillow's BMP RLE decoder is Python, slow per byte of runs (docs/benchmarks.md).
MAX_BMP_RLE_BYTES = 2 * 1024 * 1024
# libwebp's animation decoder (which Pillow uses for every WebP) allocates two RGBA canvases
# when the file is opened, and decoding copies the frame twice more: 16 bytes a pixel.
WEBP_BYTES_PER_PIXEL = 16
MAX_DECODED_BYTES = 160 * 1024 * 1024

_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
# the end of entropy-coded data: 0xFF then a marker code (not a stuffed 0, not a restart, not
# another fill byte)
NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def check_bytes(data: bytes) -> None:
    """Before Image.open (which walks a PNG's chunks, a JPEG's segments and a GIF's blocks in
    Python, and allocates a WebP's canvas): raise ImageTooLarge when the container holds more
    parts or decoding work than the budget."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        check_png(data)
    elif data.startswith(b"\xff\xd8"):
        check_jpeg(data)
    elif data.startswith((b"GIF87a", b"GIF89a")):
        check_gif(data)
    elif data.startswith(b"BM"):
        check_bmp(data)
    elif data.startswith(b"RIFF") and data[8:12] == b"WEBP":
        check_webp(data)


def check_opened(im: Image.Image, data: bytes) -> None:
    """After Image.open, before decoding: what only the parsed headers tell (TIFF strips)."""
    if im.format == "TIFF":
        check_tiff(im, data)


def _too_much(what: str) -> ImageTooLarge:
    return ImageTooLarge(message=f"The image would take too much work to decode ({what}): "
                                 "save it again as a baseline JPEG or a PNG, or scale it down.")


def jpeg_work(data: bytes) -> tuple[int, int]:
    """(blocks decoded summed over all scans, bytes of the coefficient buffer if multi-scan)
    of the first image in a JPEG, from its marker segments."""
    n, pos, segments = len(data), 2, 0
    blocks: dict[int, int] = {}
    visits = scans = 0
    while pos + 1 < n:
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            raise _too_much(f"more than {MAX_JPEG_SEGMENTS} JPEG segments")
        if data[pos] != 0xFF:
            break  # libjpeg would fail or stop here too
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # no length
            pos += 2
            continue
        if pos + 4 > n:
            break
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        segment = data[pos + 4:pos + 2 + length]
        pos += 2 + length
        if marker in _SOF:
            blocks = _component_blocks(segment)
        elif marker == 0xDA:
            scans += 1
            count = segment[0] if segment else 0
            ids = [segment[1 + 2 * k] for k in range(count) if 1 + 2 * k < len(segment)]
            visits += sum(blocks.get(i, 0) for i in ids)
            found = NEXT_MARKER.search(data, pos)
            pos = found.start() if found else n
    coefficient_bytes = 128 * sum(blocks.values()) if scans > 1 else 0
    return visits, coefficient_bytes


def _component_blocks(sof: bytes) -> dict[int, int]:
    """Blocks libjpeg allocates per component id, from a SOF segment's frame header."""
    if len(sof) < 6:
        return {}
    height, width, count = struct.unpack(">HHB", sof[1:6])
    comps = [sof[6 + 3 * k:9 + 3 * k] for k in range(count) if len(sof) >= 9 + 3 * k]
    if not comps:
        return {}
    hmax = max(max(c[1] >> 4, 1) for c in comps)
    vmax = max(max(c[1] & 15, 1) for c in comps)
    mcus = -(-width // (8 * hmax)) * -(-max(height, 1) // (8 * vmax))
    return {c[0]: mcus * max(c[1] >> 4, 1) * max(c[1] & 15, 1) for c in comps}


def check_jpeg(data: bytes) -> tuple[int, int]:
    """Refuse JPEGs whose scans or coefficient buffer exceed the budget; else ``jpeg_work``."""
    visits, coefficient_bytes = jpeg_work(data)
    if visits > MAX_JPEG_BLOCK_VISITS:
        raise _too_much(f"{visits:,} block decodes over its scans, the limit is "
                        f"{MAX_JPEG_BLOCK_VISITS:,}")
    if coefficient_bytes > MAX_JPEG_COEFFICIENT_BYTES:
        raise _too_much(f"a progressive JPEG needing {coefficient_bytes // 2**20} MB, the "
                        f"limit is {MAX_JPEG_COEFFICIENT_BYTES // 2**20} MB")
    return visits, coefficient_bytes


def check_tiff(im: Image.Image, data: bytes) -> None:
    """Refuse TIFFs listing more strips or tiles than their size has room for (Pillow decodes
    the extra ones as further 'layers' over the same pixels), and JPEG-compressed ones whose
    scans, counted over the whole file, could exceed the JPEG budget."""
    tags = im.tag_v2
    width, height = im.size
    samples = int(tags.get(277, 1))
    planes = samples if int(tags.get(284, 1)) == 2 else 1
    if 324 in tags or 325 in tags:  # tiled
        tw, th = int(tags.get(322, 0) or 0), int(tags.get(323, 0) or 0)
        if tw <= 0 or th <= 0:
            raise InvalidImage()
        expected = -(-width // tw) * -(-height // th) * planes
        listed = max(len(_values(tags.get(324))), len(_values(tags.get(325))))
        piece = tw * th
    else:
        rows = max(1, min(int(tags.get(278, height) or height), height))
        expected = -(-height // rows) * planes
        listed = max(len(_values(tags.get(273))), len(_values(tags.get(279))))
        piece = width * rows
    if listed > expected:
        raise InvalidImage(f"The TIFF lists {listed:,} strips or tiles where its size has room "
                           f"for {expected:,}: save it again, or send a PNG.")
    if int(tags.get(259, 1)) in (6, 7):  # old- and new-style JPEG in TIFF
        visits = data.count(b"\xff\xda") * -(-piece // 64) * samples
        if visits > MAX_JPEG_BLOCK_VISITS:
            raise _too_much(f"up to {visits:,} block decodes in its JPEG strips, the limit is "
                            f"{MAX_JPEG_BLOCK_VISITS:,}")


def _values(value) -> tuple:
    if value is None:
        return ()
    return value if isinstance(value, tuple) else (value,)


def check_png(data: bytes) -> None:
    """Refuse PNGs made of more chunks than Pillow should walk in Python."""
    pos, n, chunks = 8, len(data), 0
    while pos + 8 <= n:
        chunks += 1
        if chunks > MAX_PNG_CHUNKS:
            raise _too_much(f"more than {MAX_PNG_CHUNKS:,} PNG chunks")
        length = int.from_bytes(data[pos:pos + 4], "big")
        if data[pos + 4:pos + 8] == b"IEND":
            break
        pos += 12 + length


def check_gif(data: bytes) -> None:
    """Refuse GIFs with more extension sub-blocks before the first image than Pillow should
    walk in Python (a comment of millions of 1-byte sub-blocks)."""
    pos, n, blocks = 13, len(data), 0
    if n > 10 and data[10] & 0x80:  # global colour table
        pos += 3 << ((data[10] & 7) + 1)
    while pos < n and data[pos] == 0x21:  # an extension: label, then sub-blocks up to a 0
        pos += 2
        while pos < n and data[pos]:
            blocks += 1
            if blocks > MAX_GIF_BLOCKS:
                raise _too_much(f"more than {MAX_GIF_BLOCKS:,} GIF blocks")
            pos += 1 + data[pos]
        pos += 1


def check_bmp(data: bytes) -> None:
    """Refuse run-length-encoded BMPs with more runs than Pillow's Python decoder should walk."""
    if len(data) < 34 or int.from_bytes(data[14:18], "little") < 40:
        return  # an OS/2 header: no compression field
    compression = int.from_bytes(data[30:34], "little")
    offset = int.from_bytes(data[10:14], "little")
    if compression in (1, 2) and len(data) - offset > MAX_BMP_RLE_BYTES:
        raise _too_much(f"a run-length-encoded BMP of more than {MAX_BMP_RLE_BYTES // 2**20} MB")


def webp_size(data: bytes) -> tuple[int, int] | None:
    """A WebP's canvas (width, height) from its first chunk, or None if unreadable."""
    kind, body = data[12:16], data[20:30]
    if len(body) < 10:
        return None
    if kind == b"VP8 " and body[3:6] == b"\x9d\x01\x2a":
        return (int.from_bytes(body[6:8], "little") & 0x3FFF,
                int.from_bytes(body[8:10], "little") & 0x3FFF)
    if kind == b"VP8L" and body[0] == 0x2F:
        bits = int.from_bytes(body[1:5], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if kind == b"VP8X":
        return int.from_bytes(body[4:7], "little") + 1, int.from_bytes(body[7:10], "little") + 1
    return None


def check_webp(data: bytes) -> None:
    """Refuse WebPs whose canvas alone would take more than MAX_DECODED_BYTES to decode."""
    size = webp_size(data)
    if size and size[0] * size[1] * WEBP_BYTES_PER_PIXEL > MAX_DECODED_BYTES:
        limit = MAX_DECODED_BYTES // WEBP_BYTES_PER_PIXEL
        raise ImageTooLarge(message=f"A WebP image may have at most {limit:,} pixels: scale it "
                                    "down, or send it as a PNG or JPEG.")
