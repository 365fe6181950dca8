"""POST /predict/number against the real app: a written number read digit by digit."""

from __future__ import annotations

import base64
import gzip
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from test_api import assert_error

from server.inference import MAX_NUMBER_DIGITS
from server.state import get_serving

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def number_png(text: str, size: int = 80, gap: int = 0) -> tuple[bytes, list[int]]:
    """``text`` in dark DejaVu Sans Bold on white, ``gap`` extra pixels between characters;
    also the x where each character was drawn."""
    font = ImageFont.truetype(FONT, size)
    width = int(sum(font.getlength(c) for c in text)) + gap * len(text) + 40
    image = Image.new("L", (width, size + 40), 255)
    draw = ImageDraw.Draw(image)
    x, starts = 20, []
    for char in text:
        starts.append(x)
        draw.text((x, 10), char, fill=0, font=font)
        x += int(font.getlength(char)) + gap
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue(), starts


def png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def test_digits_left_to_right_with_boxes_in_one_forward_pass(client, monkeypatch):
    data, starts = number_png("5810", gap=30)
    model = get_serving(client.application).model
    batches = []
    answer = model.answer
    monkeypatch.setattr(model, "answer", lambda images: batches.append(images.shape)
                        or answer(images))
    response = client.post("/predict/number", data={"image": (io.BytesIO(data), "n.png")})
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert list(body) == ["number", "digits", "model"]
    assert body["model"] == model.model_id
    assert batches == [(4, 28, 28)], "all the digits go through the model at once"
    digits = body["digits"]
    assert body["number"] == "".join(str(d["digit"]) for d in digits)
    assert len(digits) == 4
    width, height = Image.open(io.BytesIO(data)).size
    for entry, start in zip(digits, starts):
        assert set(entry) == {"digit", "confidence", "is_digit", "digit_probability", "box"}
        assert 0 <= entry["confidence"] <= 1
        x, y, w, h = entry["box"]
        assert 0 <= x and 0 <= y and x + w <= width and y + h <= height
        assert start - 5 <= x <= start + 40, (entry["box"], start)  # the digit drawn there


def test_raw_body_answers_like_multipart(client):
    data, _ = number_png("37", gap=20)
    raw = client.post("/predict/number", data=data, content_type="image/png").get_json()
    form = client.post("/predict/number", data={"image": (io.BytesIO(data), "n.png")}).get_json()
    assert raw == form


def test_debug_adds_each_digits_28x28_image(client):
    data, _ = number_png("20", gap=20)
    digits = client.post("/predict/number?debug=1", data=data,
                         content_type="image/png").get_json()["digits"]
    for entry in digits:
        image = Image.open(io.BytesIO(base64.b64decode(entry["debug_image"])))
        assert image.size == (28, 28)


def test_errors_in_the_envelope(client):
    assert_error(client.post("/predict/number", data=b"", content_type="image/png"),
                 400, "empty_image")
    assert_error(client.post("/predict/number", data={"other": "x"},
                             content_type="multipart/form-data"), 400, "missing_field")
    assert_error(client.post("/predict/number", data=b"{}", content_type="application/json"),
                 415, "unsupported_media_type")
    blank = png(Image.new("L", (200, 80), 255))
    assert_error(client.post("/predict/number", data=blank, content_type="image/png"),
                 422, "no_digit_found")
    many, _ = number_png("1" * (MAX_NUMBER_DIGITS + 1), size=40, gap=12)
    assert_error(client.post("/predict/number", data=many, content_type="image/png"),
                 422, "too_many_digits")


def test_same_limits_as_predict(make_app):
    client = make_app(MAX_UPLOAD_BYTES=1000, MAX_IMAGE_PIXELS=10_000).test_client()
    assert_error(client.post("/predict/number", data=bytes(2000), content_type="image/png"),
                 413, "request_too_large")
    wide = png(Image.new("L", (200, 100), 255))  # 20000 pixels, a few hundred bytes
    assert_error(client.post("/predict/number", data=wide, content_type="image/png"),
                 413, "image_too_large")


def mnist_number(mnist_dir, indices: list[int]) -> tuple[bytes, str]:
    """MNIST test digits side by side (light on black, as MNIST is), 10 px apart."""
    with gzip.open(mnist_dir / "t10k-images-idx3-ubyte.gz") as f:
        images = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
    with gzip.open(mnist_dir / "t10k-labels-idx1-ubyte.gz") as f:
        labels = np.frombuffer(f.read(), np.uint8, offset=8)
    gap = np.zeros((28, 10), np.uint8)
    row = np.hstack([part for i in indices for part in (images[i], gap)])
    canvas = np.pad(row, 10)
    return png(Image.fromarray(canvas)), "".join(str(labels[i]) for i in indices)


def test_a_trained_model_reads_numbers(make_app, trained_model_path, mnist_dir):
    """Handwritten digits (MNIST test, unseen in training), the kind a briefly trained model
    reads reliably; font digits are measured by bench/written_numbers.py instead."""
    client = make_app(MODEL_PATH=str(trained_model_path)).test_client()
    data, expected = mnist_number(mnist_dir, [0, 1, 2, 3])  # 7, 2, 1, 0: clearly written
    body = client.post("/predict/number", data=data, content_type="image/png").get_json()
    assert body["number"] == expected, body
