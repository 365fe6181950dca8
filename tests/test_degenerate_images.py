"""Degenerate images on every upload route and the V2 image model: blank in any format, mode and
colour, a single lit pixel, a one-pixel line, an image a few pixels wide, non-finite floats.
None holds a digit: each is 422 no_digit_found (per file in a batch; the V2 protocol's 400 for
the request), never a 500, and never a prediction."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from drawing import digit_png
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st
from PIL import Image

from server import imaging

FUZZ = settings(max_examples=150, derandomize=True, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
NO_DIGIT = "no_digit_found"

# Pillow modes and the formats that can store each (others are converted on save)
MODES = ["1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"]
SAVES = {"PNG": {"1", "L", "P", "RGB", "RGBA", "LA", "I;16"},
         "GIF": {"1", "L", "P"}, "BMP": {"1", "L", "P", "RGB"},
         "WEBP": {"RGB", "RGBA"}, "JPEG": {"L", "RGB", "CMYK"},
         "TIFF": {"1", "L", "P", "RGB", "RGBA", "LA", "CMYK", "I;16", "I", "F"}}


def encode(array: np.ndarray, mode: str, fmt: str, **params) -> bytes:
    """``array`` (grey levels 0-255, or any floats for mode F) as a ``mode`` image in ``fmt``."""
    if mode == "F":
        image = Image.fromarray(array.astype(np.float32), "F")
    elif mode in ("I", "I;16"):
        image = Image.fromarray((array.astype(np.float64) * 257).astype(np.int32), "I")
        image = image if mode == "I" else image.convert("I;16")
    else:  # no dithering: a uniform grey stays uniform in 1-bit and palette modes
        image = Image.fromarray(np.clip(array, 0, 255).astype(np.uint8), "L").convert(
            mode, dither=Image.Dither.NONE)
    if mode not in SAVES[fmt]:
        image = image.convert("RGB" if fmt in ("WEBP", "JPEG") else "L")
    out = io.BytesIO()
    image.save(out, format=fmt, **({"lossless": True} if fmt == "WEBP" else {}), **params)
    return out.getvalue()


@st.composite
def degenerate_images(draw) -> bytes:
    """An image that holds no digit, in any format and mode."""
    fmt = draw(st.sampled_from(sorted(SAVES)))
    mode = draw(st.sampled_from(MODES))
    kind = draw(st.sampled_from(["blank", "pixel", "line", "tiny", "sliver"]))
    paper = draw(st.sampled_from([0, 255, draw(st.integers(0, 255))]))
    ink = 255 - paper if paper in (0, 255) else (paper + 128) % 256
    size = draw(st.sampled_from([(28, 28), (64, 48), (200, 120)]))
    if kind == "tiny":
        size = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    elif kind == "sliver":
        long_side = draw(st.integers(4, 1000))
        size = draw(st.sampled_from([(long_side, 1), (1, long_side)]))
    array = np.full(size[::-1], paper, dtype=np.float64)
    if kind == "pixel":
        array[draw(st.integers(0, size[1] - 1)), draw(st.integers(0, size[0] - 1))] = ink
    elif kind == "line":  # one pixel thick, along the top border or across the middle
        array[draw(st.sampled_from([0, size[1] // 2]))] = ink
    elif kind in ("tiny", "sliver"):
        array = draw(st.sampled_from([array, np.where(
            np.arange(array.size).reshape(array.shape) % 2, ink, paper)]))
    note(f"{kind} {size[0]}x{size[1]} {mode} {fmt}, paper {paper}, ink {ink}")
    return encode(array, mode, fmt)


def non_finite_tiffs() -> list[bytes]:
    """Float TIFFs no pipeline can read ink from: all NaN, all negative, +inf beside -inf."""
    big = np.full((40, 40), np.inf)
    big[:, :20] = -np.inf
    return [encode(np.full((28, 28), value), "F", "TIFF") for value in (np.nan, -3.0, np.inf)] + [
        encode(big, "F", "TIFF")]


def special_files() -> list[bytes]:
    """Blank files the strategy does not build: an animated GIF with a black first frame, a
    fully transparent PNG, an opaque RGBA, a one-colour palette."""
    frames = [Image.new("L", (28, 28), 0), Image.new("L", (28, 28), 255)]
    gif = io.BytesIO()
    frames[0].save(gif, format="GIF", save_all=True, append_images=frames[1:])
    files = [gif.getvalue()]
    for image in (Image.new("RGBA", (28, 28), (0, 0, 0, 0)),
                  Image.new("RGBA", (28, 28), (10, 200, 30, 255)),
                  Image.new("P", (28, 28), 0)):
        out = io.BytesIO()
        image.save(out, format="PNG")
        files.append(out.getvalue())
    return files + non_finite_tiffs()


def assert_no_digit(client, data: bytes) -> None:
    """Every upload route and the V2 image model answer "no digit" for ``data``."""
    for response in (
        client.post("/predict", data=data, content_type="image/png"),
        client.post("/predict", data={"image": (io.BytesIO(data), "upload")}),
        client.post("/predict/number", data={"image": (io.BytesIO(data), "upload")}),
    ):
        assert response.status_code == 422, response.get_data()[:300]
        assert response.get_json()["error"]["code"] == NO_DIGIT
    # in a batch: this file's entry says so, the digit beside it is still predicted
    batch = client.post("/predict/batch", data={"images": [
        (io.BytesIO(data), "blank"), (io.BytesIO(digit_png()), "digit")]})
    assert batch.status_code == 200, batch.get_data()[:300]
    blank, digit = batch.get_json()["predictions"]
    assert blank["error"]["code"] == NO_DIGIT and "digit" in digit
    # the V2 image model: the protocol fails the request, naming the image and the reason
    length = len(data).to_bytes(4, "little")
    query = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                         "parameters": {"binary_data_size": len(data) + 4}}]}
    header = json.dumps(query).encode()
    v2 = client.post("/v2/models/digitgrad-image/infer", data=header + length + data,
                     headers={"Inference-Header-Content-Length": str(len(header))})
    assert v2.status_code == 400 and v2.get_json()["error"].startswith("Image 0: No digit"), (
        v2.get_data()[:300])


@FUZZ
@given(data=degenerate_images())
def test_degenerate_images_hold_no_digit_on_every_route(client, data):
    assert_no_digit(client, data)


@pytest.mark.parametrize("index", range(len(special_files())))
def test_blank_special_files_hold_no_digit_on_every_route(client, index):
    assert_no_digit(client, special_files()[index])


@FUZZ
@given(data=degenerate_images())
def test_the_pipeline_finds_no_digit_in_degenerate_images(data):
    with pytest.raises(imaging.NoDigitFound):
        imaging.to_mnist(data)
