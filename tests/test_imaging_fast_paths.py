"""server.imaging's shortcuts give what the long way gives: plain PNGs and JPEGs decoded
without Image.open, JPEGs decoded straight at half scale, the digit found at half resolution,
uploads already in MNIST's format returned as they are, and the array primitives rewritten
for speed (against straightforward references)."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter

from server.imaging import (
    ImageTooLarge,
    InvalidImage,
    arrays,
    decode,
    normalise,
    pipeline,
    to_mnist,
    to_mnist_digits,
)


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def seven(size=(200, 160), box=(50, 20, 120, 120), width=12, ink=20, paper=235,
          noise=0.0) -> Image.Image:
    """A "7" drawn dark on light paper, with optional noise."""
    image = Image.new("L", size, paper)
    x0, y0, x1, y1 = box
    points = [(x0 + (x1 - x0) * x / 100, y0 + (y1 - y0) * y / 100)
              for x, y in [(25, 20), (75, 20), (45, 85)]]
    ImageDraw.Draw(image).line(points, fill=ink, width=width, joint="curve")
    if noise:
        rng = np.random.default_rng(0)
        pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, noise, (size[1], size[0]))
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    return image


def general_decode(monkeypatch, data: bytes):
    """``decode`` through Image.open only."""
    with monkeypatch.context() as patch:
        patch.setattr(decode, "decode_plain", lambda *args: None)
        return decode.decode(data, 10**8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def with_chunk(png: bytes, kind: bytes, payload: bytes) -> bytes:
    """``png`` with one more chunk right after IHDR."""
    return png[:33] + _png_chunk(kind, payload) + png[33:]


# --- decoding without Image.open --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["L", "LA", "RGB", "RGBA"])
@pytest.mark.parametrize("size", [(28, 28), (57, 33), (320, 201)])
def test_plain_png_decodes_as_pillow_does(monkeypatch, mode, size):
    image = seven(size, (size[0] // 5, size[1] // 8, size[0] * 4 // 5, size[1] * 7 // 8),
                  width=max(1, size[0] // 15), noise=4).convert(mode)
    if mode in ("LA", "RGBA"):
        alpha = Image.linear_gradient("L").resize(size)
        image.putalpha(alpha)
    data = encode(image)
    assert decode.decode_plain(data, 10**8) is not None, "took the general path"
    fast, expected = decode.decode(data, 10**8), general_decode(monkeypatch, data)
    assert fast[2] == expected[2] == size
    for got, want in zip(fast[:2], expected[:2]):
        assert (got is None) == (want is None)
        if want is not None:
            assert got.dtype == want.dtype == np.float32 and np.array_equal(got, want)


@pytest.mark.parametrize("size", [(40, 30), (400, 300), (700, 500), (1000, 800), (2000, 1500)])
@pytest.mark.parametrize("colour", [False, True])
def test_plain_jpeg_decodes_as_pillow_does(monkeypatch, size, colour):
    """Straight to grey and reduced by libjpeg as Pillow's draft would, then shrunk the same."""
    image = seven(size, (size[0] // 4, size[1] // 6, size[0] * 3 // 4, size[1] * 5 // 6),
                  width=max(2, size[0] // 20), noise=5)
    data = encode(image.convert("RGB") if colour else image, "JPEG", quality=85)
    assert decode.decode_plain(data, 10**8) is not None, "took the general path"
    (gray, alpha, got), (want, _, expected) = (decode.decode(data, 10**8),
                                               general_decode(monkeypatch, data))
    assert alpha is None and got == expected == size
    assert np.array_equal(gray, want)


def _adam7_png() -> bytes:
    """A grey PNG marked interlaced (Adam7), written by hand: Pillow cannot save one."""
    pixels = np.asarray(seven((16, 16), (2, 2, 14, 14), width=3))
    passes = []  # Adam7: the pixels of each pass, each row with filter byte 0
    for y0, x0, dy, dx in [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4),
                           (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]:
        for row in pixels[y0::dy, x0::dx]:
            if row.size:
                passes.append(b"\x00" + row.tobytes())
    header = struct.pack(">IIBBBBB", 16, 16, 8, 0, 0, 0, 1)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(b"".join(passes))) + _png_chunk(b"IEND", b""))


def _unusual_files() -> dict[str, bytes]:
    grey = seven((60, 50))
    png = encode(grey)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: only the general path reads orientation
    broken_header = bytearray(png)
    broken_header[29] ^= 0xFF  # IHDR's checksum
    idat = png.index(b"IDAT") - 4
    return {
        "palette": encode(grey.convert("P")),
        "transparent grey": encode(grey, transparency=235),
        "16-bit": encode(grey.convert("I;16")),
        "interlaced": _adam7_png(),
        "text": with_chunk(png, b"tEXt", b"Comment\x00hello"),
        "eXIf": with_chunk(png, b"eXIf", exif.tobytes()),
        "bad IHDR checksum": bytes(broken_header),
        "IDAT runs apart": (png[:idat] + _png_chunk(b"IDAT", b"")
                            + _png_chunk(b"gAMA", b"\0\0\xb1\x8f") + png[idat:]),
        "bigger than WORK_SIZE": encode(seven((decode.WORK_SIZE + 1, 40))),
        "JPEG with EXIF": encode(grey, "JPEG", exif=exif.tobytes()),
        "JPEG with an ICC profile": encode(grey.convert("RGB"), "JPEG",
                                           icc_profile=b"\0" * 128),
        "CMYK JPEG": encode(grey.convert("CMYK"), "JPEG"),
    }


@pytest.mark.parametrize("name", list(_unusual_files()))
def test_anything_unusual_takes_the_general_path(name):
    data = _unusual_files()[name]
    assert decode.decode_plain(data, 10**8) is None
    if name in ("bad IHDR checksum", "IDAT runs apart"):  # Pillow refuses them
        with pytest.raises(InvalidImage):
            decode.decode(data, 10**8)
    else:
        decode.decode(data, 10**8)  # which reads it


def test_harmless_png_chunks_stay_on_the_short_path(monkeypatch):
    png = encode(seven((60, 50)))
    data = with_chunk(with_chunk(png, b"gAMA", b"\0\0\xb1\x8f"), b"pHYs", b"\0" * 9)
    assert decode.decode_plain(data, 10**8) is not None
    assert np.array_equal(decode.decode(data, 10**8)[0], general_decode(monkeypatch, data)[0])


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_plain_files_are_invalid(fmt):
    data = encode(seven((300, 200), noise=8), fmt)
    for cut in (0.3, 0.7, 0.95):
        with pytest.raises(InvalidImage):
            to_mnist(data[:int(len(data) * cut)])


# --- JPEGs decoded straight at half scale ---------------------------------------------------


def test_half_scale_jpeg_is_the_halved_picture():
    data = encode(seven((400, 300), (120, 40, 300, 260), width=24, noise=5), "JPEG", quality=85)
    half = decode.decode_half(data, 10**8, pipeline.HALF_SIZE)
    full = decode.decode(data, 10**8)[0]
    assert half.shape == (75, 100) and full.shape == (150, 200)
    assert np.abs(half - arrays.halve(full)).mean() < 0.005


def test_half_scale_only_for_single_scan_jpegs_big_enough():
    picture = seven((400, 300), (120, 40, 300, 260), width=24)
    assert decode.decode_half(encode(picture, "JPEG", progressive=True), 10**8, 80) is None
    assert decode.decode_half(encode(picture), 10**8, 80) is None  # a PNG
    assert decode.decode_half(encode(picture.resize((150, 110)), "JPEG"), 10**8, 80) is None
    assert decode.decode_half(encode(picture, "JPEG"), 10**8, 80) is not None


def test_half_scale_keeps_the_limits():
    data = encode(seven((400, 300)), "JPEG")
    assert decode.decode_half(data, 400 * 300 - 1, 80) is None  # decode then refuses it
    with pytest.raises(ImageTooLarge):
        to_mnist(data, max_pixels=400 * 300 - 1)


# --- the digit found at half resolution -----------------------------------------------------


def _ink_maps(monkeypatch) -> list:
    seen = []
    original = pipeline.extract_ink
    monkeypatch.setattr(pipeline, "extract_ink", lambda g: seen.append(g.shape) or original(g))
    return seen


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_a_big_digit_is_found_at_half_resolution(monkeypatch, fmt):
    seen = _ink_maps(monkeypatch)
    image = to_mnist(encode(seven((400, 300), (120, 40, 300, 260), width=24, noise=4), fmt))
    assert seen == [(75, 100)]
    assert image.max() > 0.95


def test_a_small_digit_is_looked_for_again_at_full_resolution(monkeypatch):
    seen = _ink_maps(monkeypatch)
    small = seven((640, 480), (300, 200, 360, 280), width=6)  # ~40 pixels tall at full scale
    image = to_mnist(encode(small))
    assert seen == [(120, 160), (240, 320)]
    big = to_mnist(encode(seven((640, 480), (200, 100, 440, 420), width=24)))
    assert np.abs(image - big).mean() < 0.06, "the same 7, small or big"


# --- uploads already in MNIST's format ------------------------------------------------------


@pytest.fixture(scope="module")
def mnist_like() -> np.ndarray:
    """A 28x28 digit as the pipeline makes it, in grey levels: MNIST's format."""
    return np.rint(to_mnist(encode(seven())) * 255).astype(np.uint8)


def test_an_mnist_format_upload_comes_back_as_it_is(monkeypatch, mnist_like):
    calls = _ink_maps(monkeypatch)
    image = to_mnist(encode(Image.fromarray(mnist_like)))
    assert calls == [] and np.array_equal(image, mnist_like / np.float32(255))


def _variants(digit: np.ndarray) -> dict[str, np.ndarray]:
    rows, cols = np.flatnonzero(digit.any(1)), np.flatnonzero(digit.any(0))
    crop = digit[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    small = np.zeros_like(digit)
    shrunk = np.asarray(Image.fromarray(crop).resize((max(1, crop.shape[1] * 7 // 10), 14)))
    small[7:21, 8:8 + shrunk.shape[1]] = shrunk
    big = np.asarray(Image.fromarray(digit).resize((34, 34)))[3:31, 3:31]
    tight = np.zeros((crop.shape[0], crop.shape[0]), dtype=np.uint8)
    tight[:, :crop.shape[1]] = crop
    thick = np.asarray(Image.fromarray(digit).filter(ImageFilter.MaxFilter(5)))
    return {
        "inverted": 255 - digit,
        "off-centre": np.roll(digit, (3, -3), axis=(0, 1)),
        "small": small,
        "big": big,
        "tight crop": np.asarray(Image.fromarray(tight).resize((28, 28))),
        "faint": (digit * 0.6).astype(np.uint8),
        "thick strokes": thick,
        "grey paper": np.maximum(digit, 30),
    }


@pytest.mark.parametrize("name", ["inverted", "off-centre", "small", "big", "tight crop",
                                  "faint", "thick strokes", "grey paper"])
def test_anything_else_takes_the_full_pipeline(monkeypatch, mnist_like, name):
    variant = _variants(mnist_like)[name]
    data = encode(Image.fromarray(variant))
    assert not normalise.is_mnist_format(decode.decode(data, 10**8)[0])
    image = to_mnist(data)
    monkeypatch.setattr(pipeline, "is_mnist_format", lambda gray: False)
    assert np.array_equal(image, to_mnist(data))


# --- the primitives, against straightforward references -------------------------------------


def _reference_labels(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labels by flood fill, numbered in row-major order of appearance."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    n = 0
    h, w = mask.shape
    for y, x in zip(*np.nonzero(mask)):
        if labels[y, x]:
            continue
        n += 1
        stack = [(y, x)]
        labels[y, x] = n
        while stack:
            cy, cx = stack.pop()
            for ny in range(max(cy - 1, 0), min(cy + 2, h)):
                for nx in range(max(cx - 1, 0), min(cx + 2, w)):
                    if mask[ny, nx] and not labels[ny, nx]:
                        labels[ny, nx] = n
                        stack.append((ny, nx))
    return labels, n


@pytest.mark.parametrize("few_runs", [0, 10**9])  # numpy's pairing, Python's
def test_components_label_like_a_flood_fill(monkeypatch, few_runs):
    monkeypatch.setattr(arrays, "FEW_RUNS", few_runs)
    rng = np.random.default_rng(0)
    for _ in range(60):
        shape = tuple(rng.integers(1, 40, size=2))
        mask = rng.random(shape) < rng.uniform(0.05, 0.7)
        labels, n = arrays.label(mask)
        expected, m = _reference_labels(mask)
        assert n == m and np.array_equal(labels, expected)


def test_box3_is_the_mean_over_the_edge_padded_3x3():
    rng = np.random.default_rng(1)
    for shape in [(1, 1), (1, 7), (5, 1), (2, 3), (30, 41)]:
        array = rng.normal(size=shape).astype(np.float32)
        padded = np.pad(array.astype(np.float64), 1, mode="edge")
        expected = sum(padded[dy:dy + shape[0], dx:dx + shape[1]]
                       for dy in range(3) for dx in range(3)) / 9
        assert np.allclose(arrays.box3(array), expected, atol=1e-6)


def test_halve_is_pillows_reduce():
    rng = np.random.default_rng(2)
    for shape in [(1, 1), (3, 5), (4, 4), (75, 100), (151, 200)]:
        array = rng.random(shape).astype(np.float32)
        expected = np.asarray(Image.fromarray(array, mode="F").reduce(2))
        assert np.allclose(arrays.halve(array), expected, atol=1e-6)


def test_median_and_percentile_are_numpys():
    rng = np.random.default_rng(3)
    for n in [1, 2, 3, 10, 11, 1000, 1001]:
        values = rng.normal(size=n).astype(np.float32)
        assert arrays.median(values) == pytest.approx(float(np.median(values)), abs=1e-7)
        for q in (5, 50, 90, 95):
            assert arrays.percentile(values, q) == pytest.approx(
                float(np.percentile(values, q)), abs=1e-6)


@pytest.mark.parametrize("size", [(72, 48), (13, 90), (7, 5), (1, 30), (200, 3)])
@pytest.mark.parametrize("long_side", [normalise.BOX, normalise.STROKE_SIZE])
def test_fit_resizes_as_pillow_does(size, long_side):
    rng = np.random.default_rng(4)
    crop = rng.random(size).astype(np.float32)
    fitted = normalise.fit(crop, long_side)
    h, w = size
    scale = long_side / max(h, w)
    new = (max(1, round(w * scale)), max(1, round(h * scale)))
    resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
    expected = np.asarray(Image.fromarray(crop, mode="F").resize(new, resample=resample))
    assert fitted.shape == expected.shape
    assert np.allclose(fitted, np.clip(expected, 0, 1), atol=1e-6)


# --- written numbers ------------------------------------------------------------------------


def test_boxes_of_a_big_jpeg_are_in_its_own_pixels():
    """libjpeg decodes it reduced; the boxes are still in the upload's pixels."""
    image = Image.new("L", (1300, 300), 255)
    draw = ImageDraw.Draw(image)
    draw.line([(150, 60), (150, 240)], fill=0, width=30)  # a 1
    draw.line([(600, 60), (800, 60), (680, 240)], fill=0, width=30)  # a 7
    digits = to_mnist_digits(encode(image, "JPEG", quality=90))
    assert len(digits) == 2
    (x, y, _, h), (x2, _, w2, _) = digits[0][1], digits[1][1]
    assert abs(x - 135) <= 12 and abs(y - 60) <= 16 and abs(h - 180) <= 24
    assert abs(x2 - 585) <= 16 and abs(x2 + w2 - 815) <= 16
