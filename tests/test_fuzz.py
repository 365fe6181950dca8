"""Property tests: whatever bytes arrive, /predict answers 200 or a 4xx JSON envelope, never
5xx; and whatever the picture, the pipeline's work stays within its bounds."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image, ImageDraw

from server import imaging
from server.imaging import arrays, decode, limits, normalise, pieces, pipeline

MAX_PIXELS = 1_000_000
# The app is stateless between requests (only its metrics grow), so one per test is shared by
# all of hypothesis' examples.
FUZZ = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture
def app(make_app):
    return make_app(MAX_IMAGE_PIXELS=MAX_PIXELS)


def post_both_ways(client, data: bytes, content_type: str = "image/png"):
    """The same bytes as a raw body and as a multipart upload: both answers are checked."""
    raw = client.post("/predict", data=data, content_type=content_type)
    multipart = client.post("/predict", data={"image": (io.BytesIO(data), "upload")})
    return [raw, multipart]


def assert_sane(response, allowed=(200, 400, 413, 415, 422)) -> None:
    assert response.status_code in allowed, response.get_data(as_text=True)[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    if response.status_code == 200:
        assert len(body["probabilities"]) == 10 and 0 <= body["digit"] <= 9
    else:
        assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
        assert b"Traceback" not in response.get_data()


def encode(array: np.ndarray, mode: str, fmt: str) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).convert(mode).save(out, format=fmt)
    return out.getvalue()


def sample_image(seed: int, fmt: str) -> bytes:
    """A small dark blob on light paper with some noise, encoded as ``fmt``."""
    rng = np.random.default_rng(seed)
    array = np.full((40, 40), 230, dtype=np.uint8) - rng.integers(0, 20, (40, 40), dtype=np.uint8)
    array[10:30, 17:23] = 20
    return encode(array, "L", fmt)


@FUZZ
@given(data=st.binary(max_size=3000))
def test_random_bytes(client, data):
    for response in post_both_ways(client, data):
        assert_sane(response)


@FUZZ
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["PNG", "JPEG"]), cut=st.floats(0, 1))
def test_truncated_images(client, seed, fmt, cut):
    data = sample_image(seed, fmt)
    for response in post_both_ways(client, data[: int(len(data) * cut)]):
        assert_sane(response)


@FUZZ
@given(seed=st.integers(0, 2**16), fmt=st.sampled_from(["PNG", "JPEG", "GIF", "BMP", "WEBP"]),
       edits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_images(client, seed, fmt, edits):
    data = bytearray(sample_image(seed, fmt))
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    for response in post_both_ways(client, bytes(data)):
        assert_sane(response)


def png_chunk(tag: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(tag + payload))
    return struct.pack(">I", len(payload)) + tag + payload + crc


def png_header_only(width: int, height: int) -> bytes:
    """A well-formed PNG header declaring width x height, with almost no pixel data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr)
            + png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + png_chunk(b"IEND", b""))


def gif_header_only(width: int, height: int) -> bytes:
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + descriptor + b"\x02\x02\x4c\x01\x00;"


def jpeg_header_only(width: int, height: int) -> bytes:
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    sos = b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00"
    return b"\xff\xd8" + sof + sos + b"\x00" * 32 + b"\xff\xd9"


def bmp_header_only(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return struct.pack("<2sIHHI", b"BM", 54 + 64, 0, 0, 54) + info + b"\0" * 64


@FUZZ
@given(width=st.integers(1, 65535), height=st.integers(1, 65535),
       make=st.sampled_from([png_header_only, gif_header_only, jpeg_header_only,
                             bmp_header_only]))
def test_huge_declared_dimensions_are_refused_before_decoding(client, width, height, make):
    assume(width * height > MAX_PIXELS)
    for response in post_both_ways(client, make(width, height)):
        assert_sane(response, allowed=(413,))
        assert response.get_json()["error"]["code"] == "image_too_large"


MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "PA", "I;16", "I", "F", "CMYK", "YCbCr"]
FORMATS = ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"]


@FUZZ
@given(mode=st.sampled_from(MODES), fmt=st.sampled_from(FORMATS),
       width=st.integers(1, 96), height=st.integers(1, 96), seed=st.integers(0, 2**16),
       kind=st.sampled_from(["noise", "blank", "ink", "digit"]))
def test_odd_modes_and_sizes(client, mode, fmt, width, height, seed, kind):
    rng = np.random.default_rng(seed)
    if kind == "noise":
        array = rng.integers(0, 256, (height, width), dtype=np.uint8)
    else:
        array = np.full((height, width), 0 if kind == "ink" else 255, dtype=np.uint8)
        if kind == "digit":
            array[height // 4: 3 * height // 4 + 1, width // 3: width // 2 + 1] = 0
    try:
        data = encode(array, mode, fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # this format cannot store this mode: nothing to send
    for response in post_both_ways(client, data, content_type=f"image/{fmt.lower()}"):
        assert_sane(response)


@FUZZ
@given(content_type=st.text(max_size=40))
def test_any_content_type(client, content_type):
    png = sample_image(0, "PNG")
    try:
        response = client.post("/predict", data=png, headers={"Content-Type": content_type})
    except ValueError:
        assume(False)  # not sendable as a header (newlines and the like)
    assert_sane(response)


@FUZZ
@given(files=st.lists(st.one_of(st.binary(max_size=500), st.integers(0, 2**16).map(
    lambda seed: sample_image(seed, "PNG"))), min_size=1, max_size=5))
def test_batch_of_anything(client, files):
    data = {"images": [(io.BytesIO(f), f"{i}.bin") for i, f in enumerate(files)]}
    response = client.post("/predict/batch", data=data)
    assert response.status_code == 200 and response.mimetype == "application/json"
    entries = response.get_json()["predictions"]
    assert len(entries) == len(files)
    for entry in entries:
        assert "digit" in entry or set(entry["error"]) == {"code", "message"}


# --- the pipeline's cost, not only its answers ------------------------------------------------

COST = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


class WorkMeter:
    """Pixels handed to the pipeline's primitives during one upload (numpy passes, labelling)."""

    def __init__(self, monkeypatch):
        self.pixels = {"ink map": 0, "labelled": 0, "morphology": 0}

        def count(owner, name, key, size):
            original = getattr(owner, name)

            def wrapper(*args, **kwargs):
                self.pixels[key] = (max(self.pixels[key], size(*args)) if key == "ink map"
                                    else self.pixels[key] + size(*args))
                return original(*args, **kwargs)

            monkeypatch.setattr(owner, name, wrapper)

        count(pipeline, "extract_ink", "ink map", lambda gray: gray.size)
        count(arrays, "runs", "labelled", lambda mask: mask.size)
        count(arrays, "morph_step", "morphology", lambda image, *a: image.size)

    def reset(self) -> None:
        self.pixels = dict.fromkeys(self.pixels, 0)


@pytest.fixture
def meter(monkeypatch) -> WorkMeter:
    return WorkMeter(monkeypatch)


def drawn_upload(width, height, shapes, polarity, noise, fmt, seed) -> bytes:
    """Shapes (filled rectangles, rings, lines of any width) on noisy paper, encoded as fmt."""
    rng = np.random.default_rng(seed)
    paper, ink = (235, 20) if polarity else (20, 235)
    image = Image.new("L", (width, height), paper)
    draw = ImageDraw.Draw(image)
    for kind, x0, y0, x1, y1, stroke in shapes:
        box = sorted((x0 * width, x1 * width)), sorted((y0 * height, y1 * height))
        xy = (box[0][0], box[1][0], box[0][1], box[1][1])
        if kind == "rectangle":  # filled: the solid-square attack and its relatives
            draw.rectangle(xy, fill=ink)
        elif kind == "ellipse":
            draw.ellipse(xy, outline=ink, width=max(1, int(stroke * min(width, height))))
        else:
            draw.line(xy, fill=ink, width=max(1, int(stroke * min(width, height))))
    pixels = np.asarray(image, dtype=np.float32) + rng.normal(0, noise, (height, width))
    out = io.BytesIO()
    params = {"progressive": True} if fmt == "progressive JPEG" else {}
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(
        out, format="JPEG" if "JPEG" in fmt else fmt, **params)
    return out.getvalue()


SHAPES = st.lists(st.tuples(st.sampled_from(["rectangle", "ellipse", "line"]),
                            st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1),
                            st.floats(0.01, 0.5)), min_size=0, max_size=6)


@COST
@given(width=st.integers(1, 800), height=st.integers(1, 800), shapes=SHAPES,
       polarity=st.booleans(), noise=st.sampled_from([0, 3, 20, 80]),
       fmt=st.sampled_from(["PNG", "JPEG", "progressive JPEG", "BMP"]), seed=st.integers(0, 99))
def test_pipeline_work_is_bounded_whatever_the_picture(meter, width, height, shapes, polarity,
                                                       noise, fmt, seed):
    """Solid blocks, thick rings, noise, any size: the work after decoding never exceeds what
    a WORK_SIZE picture and a STROKE_SIZE stroke stage allow."""
    data = drawn_upload(width, height, shapes, polarity, noise, fmt, seed)
    meter.reset()
    for read in (imaging.to_mnist, imaging.to_mnist_digits):
        try:
            read(data)
        except imaging.ImageError:
            pass
    stroke = normalise.STROKE_SIZE + 2 * (normalise.STROKE_SIZE // 2)
    assert meter.pixels["ink map"] <= decode.WORK_SIZE**2
    assert meter.pixels["morphology"] <= 2 * (normalise.STROKE_SIZE // 2) * stroke**2
    # per read: the coarse map and the paper map at half and full resolution (at most 80 a
    # side at half), and the thinning's checks on the stroke map
    assert meter.pixels["labelled"] <= 2 * (pieces.COARSE_SIZE**2 + 64**2 + 2 * 80**2 + (
        normalise.STROKE_SIZE // 2 + 1) * normalise.STROKE_SIZE**2)


@COST
@given(repeats=st.integers(0, 3000), side=st.sampled_from([64, 512, 2048]),
       cut=st.floats(0.2, 1))
def test_jpeg_scan_budget_whatever_the_scans(repeats, side, cut):
    """Repeated (and truncated) progressive scans: refused exactly when the blocks decoded over
    all scans pass the budget, and never another error."""
    out = io.BytesIO()
    Image.new("L", (side, side), 180).save(out, format="JPEG", progressive=True)
    data = out.getvalue()
    last = data.rindex(b"\xff\xda")
    end = data.rindex(b"\xff\xd9")
    data = data[:end] + data[last:end] * repeats + data[end:]
    data = data[:max(4, int(len(data) * cut))]
    scans = data.count(b"\xff\xda")
    try:
        visits, _ = limits.jpeg_work(data)
    except imaging.ImageTooLarge:  # refused on the number of segments alone
        assert 2 * scans > limits.MAX_JPEG_SEGMENTS
        return
    assert visits <= scans * (-(-side // 8)) ** 2
    try:
        imaging.to_mnist(data)
    except imaging.ImageTooLarge:
        assert visits > limits.MAX_JPEG_BLOCK_VISITS
    except imaging.ImageError:
        assert visits <= limits.MAX_JPEG_BLOCK_VISITS
