"""Hostile uploads: small, valid-looking files that cost seconds or hundreds of MB in a naive
pipeline. Each is generated here (no committed binaries); the bound is asserted by counting
work (decoder operations, pixels, passes) or by memory, never by wall-clock time."""

from __future__ import annotations

import functools
import io
import struct
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from server.imaging import (
    ImageError,
    ImageTooLarge,
    InvalidImage,
    arrays,
    decode,
    limits,
    normalise,
    to_mnist,
)

WORK_BYTES = 4 * decode.WORK_SIZE**2  # one float32 array of the working size


def _save(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def _segments(data: bytes) -> list[tuple[int, int]]:
    """(marker, start offset) of a JPEG's marker segments up to EOI (entropy data skipped)."""
    found, pos = [], 2
    while pos < len(data) and data[pos + 1] != 0xD9:
        marker = data[pos + 1]
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        found.append((marker, pos))
        pos += 2 + length
        if marker == 0xDA:
            match = limits.NEXT_MARKER.search(data, pos)
            pos = match.start() if match else len(data)
    return found


def repeated_scans_jpeg(side: int = 2048, repeats: int = 900) -> bytes:
    """A flat progressive JPEG whose last scan (with its DHT) is repeated before EOI: each
    copy is ~90 bytes and makes libjpeg decode every block of the image once more."""
    data = _save(Image.new("L", (side, side), 200), "JPEG", progressive=True, quality=90)
    segments = _segments(data)
    last_scan = max(pos for marker, pos in segments if marker == 0xDA)
    start = max((pos for marker, pos in segments if marker == 0xC4 and pos < last_scan),
                default=last_scan)
    end = data.rindex(b"\xff\xd9")
    return data[:end] + data[start:end] * repeats + data[end:]


def filled_square_png(side: int = 424, square: int = 280) -> bytes:
    """A solid black square on white: no inner edge, so a naive stroke width is its area."""
    image = Image.new("L", (side, side), 255)
    offset = (side - square) // 2
    ImageDraw.Draw(image).rectangle((offset, offset, offset + square - 1, offset + square - 1),
                                    fill=0)
    return _save(image, "PNG")


def strip_blowup_tiff(side: int = 1000, entries: int = 100_000) -> bytes:
    """An uncompressed grey TIFF of one strip whose StripOffsets / StripByteCounts list
    ``entries`` strips, all the same pixels: Pillow wraps them into 'layers' and decodes
    every one."""
    pixels = np.full((side, side), 255, dtype=np.uint8)
    pixels[side // 4:3 * side // 4, side // 2 - side // 20:side // 2 + side // 20] = 0
    header_size, tag_count = 8, 9
    ifd_size = 2 + 12 * tag_count + 4
    offsets_at = header_size + ifd_size
    counts_at = offsets_at + 4 * entries
    pixels_at = counts_at + 4 * entries
    tags = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 8), (259, 3, 1, 1),
            (262, 3, 1, 1), (273, 4, entries, offsets_at), (277, 3, 1, 1), (278, 4, 1, side),
            (279, 4, entries, counts_at)]
    ifd = struct.pack("<H", tag_count) + b"".join(
        struct.pack("<HHII", tag, kind, count, value) for tag, kind, count, value in tags)
    return (b"II*\x00" + struct.pack("<I", header_size) + ifd + struct.pack("<I", 0)
            + struct.pack(f"<{entries}I", *[pixels_at] * entries)
            + struct.pack(f"<{entries}I", *[side * side] * entries) + pixels.tobytes())


@functools.lru_cache(maxsize=1)
def huge_rgba_png(width: int = 8000, height: int = 5000) -> bytes:
    """A 40 MP RGBA PNG of a black bar (a "1") on transparency, ~160 KB: 160 MB decoded."""
    blank = b"\x00" + bytes(4 * width)
    bar = bytearray(blank)
    bar[1 + 4 * (width // 2 - width // 40):1 + 4 * (width // 2 + width // 40)] = (
        b"\x00\x00\x00\xff" * (2 * (width // 40)))
    packer = zlib.compressobj(1)
    rows = [packer.compress(bytes(bar) if height // 5 <= y < 4 * height // 5 else blank)
            for y in range(height)]
    pixels = b"".join(rows) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
            + _png_chunk(b"IEND", b""))


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def many_chunks_png(chunks: int = 200_000) -> bytes:
    """A small PNG with a great many tiny ancillary chunks before its pixels."""
    data = _save(Image.new("L", (64, 64), 255), "PNG")
    return data[:33] + _png_chunk(b"zzZz", b"") * chunks + data[33:]


HOSTILE = {
    "repeated-scans.jpg": repeated_scans_jpeg,
    "filled-square.png": filled_square_png,
    "strip-blowup.tif": strip_blowup_tiff,
    "huge-rgba.png": huge_rgba_png,
    "many-chunks.png": many_chunks_png,
}


# --- helpers that count work ----------------------------------------------------------------


class Calls:
    """Counts calls to a wrapped function, keeping what ``record`` says about each."""

    def __init__(self, monkeypatch, owner, name: str, record=lambda *a, **k: None):
        self.records: list = []
        original = getattr(owner, name)

        def wrapper(*args, **kwargs):
            self.records.append(record(*args, **kwargs))
            return original(*args, **kwargs)

        monkeypatch.setattr(owner, name, wrapper)

    @property
    def count(self) -> int:
        return len(self.records)


@pytest.fixture
def decodes(monkeypatch) -> Calls:
    """Pillow's pixel decoding (ImageFile.load): what must not start for a refused file."""
    from PIL import ImageFile

    return Calls(monkeypatch, ImageFile.ImageFile, "load")


@pytest.fixture
def opens(monkeypatch) -> Calls:
    """Image.open: Pillow walks PNG chunks, JPEG segments and GIF blocks there, in Python."""
    return Calls(monkeypatch, Image, "open")


def peak_memory_growth(tmp_path, data: bytes) -> float:
    """MB by which a fresh process's peak RSS grows while to_mnist reads ``data``: Pillow's
    and libjpeg's buffers are C allocations, which tracemalloc does not see."""
    import subprocess
    import sys

    path = tmp_path / "upload.bin"
    path.write_bytes(data)
    script = (
        "import resource, sys\n"
        "from server import imaging\n"
        "data = open(sys.argv[1], 'rb').read()\n"
        "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "try:\n"
        "    imaging.to_mnist(data)\n"
        "except imaging.ImageError:\n"
        "    pass\n"
        "print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)\n")
    result = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True,
                            text=True, check=True, cwd=Path(__file__).resolve().parents[1])
    return float(result.stdout)


# --- the four attacks of the security review --------------------------------------------------


def test_repeated_progressive_scans_are_refused_before_decoding(decodes):
    data = repeated_scans_jpeg()
    visits, _ = limits.jpeg_work(data)
    assert visits > limits.MAX_JPEG_BLOCK_VISITS
    with pytest.raises(ImageTooLarge, match="too much work"):
        to_mnist(data)
    assert decodes.count == 0, "libjpeg must not start on a file over the budget"


def test_an_ordinary_progressive_jpeg_is_within_the_budget():
    """libjpeg's default progressive script: a handful of scans, each block a few times."""
    photo = Image.new("RGB", (4000, 3000), (230, 225, 220))
    ImageDraw.Draw(photo).line([(1500, 800), (2500, 800), (1900, 2400)], fill=0, width=150)
    data = _save(photo, "JPEG", progressive=True, quality=85)
    visits, coefficient_bytes = limits.jpeg_work(data)
    luma_blocks = 4000 * 3000 // 64
    assert luma_blocks * 3 <= visits <= luma_blocks * 12
    # 4:2:0: half as many chroma blocks as luma ones, 64 coefficients of 2 bytes each; whole
    # 16x16 MCUs, so a little more
    assert 1 <= coefficient_bytes / (128 * luma_blocks * 3 // 2) < 1.01
    assert visits <= limits.MAX_JPEG_BLOCK_VISITS
    assert to_mnist(data).shape == (28, 28)


def test_jpeg_work_is_blocks_times_scans():
    gray = Image.new("L", (64, 48), 128)
    assert limits.jpeg_work(_save(gray, "JPEG")) == (48, 0)  # one scan, no buffer
    progressive = _save(gray, "JPEG", progressive=True)
    scans = progressive.count(b"\xff\xda")
    assert limits.jpeg_work(progressive) == (48 * scans, 128 * 48)


@pytest.mark.parametrize("side, square", [(424, 280), (1000, 900), (64, 60)])
def test_filled_square_costs_what_the_28x28_output_allows(monkeypatch, side, square):
    """A solid square has no inner edge: its 'stroke width' is its size. The morphology runs
    on at most STROKE_SIZE a side, at most STROKE_SIZE / 2 passes, whatever the square."""
    passes = Calls(monkeypatch, arrays, "morph_step", lambda image, *a: image.size)
    to_mnist(filled_square_png(side, square))
    bound = normalise.STROKE_SIZE // 2 * (2 * normalise.STROKE_SIZE) ** 2
    assert sum(passes.records) <= bound, f"{sum(passes.records):,} pixel passes"


def test_strip_arrays_longer_than_the_image_are_refused_before_decoding(decodes):
    with pytest.raises(InvalidImage, match="strips"):
        to_mnist(strip_blowup_tiff())
    assert decodes.count == 0


def test_ordinary_striped_and_tiled_tiffs_are_read():
    image = Image.new("L", (300, 200), 255)
    ImageDraw.Draw(image).line([(100, 40), (200, 40), (140, 170)], fill=0, width=14)
    for params in ({}, {"compression": "tiff_lzw"}, {"compression": "tiff_adobe_deflate"}):
        assert to_mnist(_save(image, "TIFF", **params)).max() > 0.9


def test_huge_rgba_png_is_reduced_a_strip_at_a_time(monkeypatch):
    """Colour conversion never sees more than a strip of a 40 MP image, and after decoding
    every array is at most WORK_SIZE^2: the numpy stages cost what a 320x320 upload does."""
    data = huge_rgba_png()
    converted = Calls(monkeypatch, Image.Image, "convert", lambda im, *a, **k: im.size)
    tracemalloc.start()
    try:
        image = to_mnist(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert image.max() > 0.9, "the bar is read as ink"
    largest = max(w * h for w, h in converted.records)
    assert largest <= 8000 * 2 * 256, f"a conversion of {largest:,} pixels"
    assert peak < 40 * WORK_BYTES, f"numpy peak {peak / 2**20:.1f} MB"


def test_huge_rgba_png_stays_under_200_mb(tmp_path):
    growth = peak_memory_growth(tmp_path, huge_rgba_png())
    assert growth < 200, f"peak memory grew by {growth:.0f} MB"


# --- more of the same kind --------------------------------------------------------------------


def webp_header(width: int, height: int) -> bytes:
    """The start of an extended WebP declaring a width x height canvas."""
    vp8x = b"VP8X" + struct.pack("<I", 10) + bytes(4) + (width - 1).to_bytes(3, "little") + (
        height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def gif_comment_blocks(blocks: int = 500_000) -> bytes:
    """A small GIF preceded by a comment of ``blocks`` one-byte sub-blocks."""
    data = _save(Image.new("L", (32, 32), 255), "GIF")
    head = 13 + (3 << ((data[10] & 7) + 1) if data[10] & 0x80 else 0)
    return data[:head] + b"\x21\xfe" + b"\x01x" * blocks + b"\x00" + data[head:]


def rle_bmp(side: int = 1500) -> bytes:
    """An 8-bit run-length-encoded BMP made of one-pixel runs: Pillow decodes it in Python."""
    runs = (b"\x01\x00\x01\xff" * (side // 2) + b"\x00\x00") * side + b"\x00\x01"
    palette = b"".join(bytes((i, i, i, 0)) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, side, side, 1, 8, 1, len(runs), 2835, 2835, 256, 0)
    offset = 14 + len(info) + len(palette)
    return b"BM" + struct.pack("<IHHI", offset + len(runs), 0, 0, offset) + info + palette + runs


@pytest.mark.parametrize("name, make", [
    ("many PNG chunks", many_chunks_png),
    ("GIF comment of tiny blocks", gif_comment_blocks),
    ("RLE BMP of one-pixel runs", rle_bmp),
    ("WebP canvas of 12 MP (16 bytes a pixel to decode)", lambda: webp_header(4000, 3000)),
])
def test_containers_over_the_budget_are_refused_before_pillow_opens_them(opens, name, make):
    with pytest.raises(ImageTooLarge):
        to_mnist(make())
    assert opens.count == 0, name


def test_the_container_walks_are_bounded_by_their_limits():
    """The checks themselves stop at their limit: a 5 MB file of parts costs no more."""
    cases = [(many_chunks_png(400_000), f"more than {limits.MAX_PNG_CHUNKS:,} PNG chunks"),
             (gif_comment_blocks(2_000_000), f"more than {limits.MAX_GIF_BLOCKS:,} GIF blocks")]
    for data, limit in cases:
        with pytest.raises(ImageTooLarge, match=limit):
            limits.check_bytes(data)


def test_errors_of_every_hostile_file_are_image_errors():
    for name, make in HOSTILE.items():
        if name == "huge-rgba.png":
            continue  # read above
        try:
            to_mnist(make())
        except ImageError:
            pass
