"""server.imaging.to_mnist_digits: a written number split into digits left to right, with
boxes in the original image's pixels."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from server.imaging import NoDigitFound, TooManyDigits, to_mnist, to_mnist_digits

FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def encode(image: Image.Image, fmt: str = "PNG") -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def written(text: str, size: int = 100, scale: int = 1, ink: int = 0,
            paper: int = 255) -> tuple[bytes, list[tuple[int, int, int, int]]]:
    """``text`` rendered in DejaVu Sans, and each character's ink box (x, y, w, h)."""
    font = ImageFont.truetype(FONT, size * scale)
    width = int(font.getlength(text)) + 40 * scale
    image = Image.new("L", (width, int(size * 1.6) * scale), paper)
    draw = ImageDraw.Draw(image)
    boxes, x = [], 20 * scale
    for char in text:
        draw.text((x, 20 * scale), char, fill=ink, font=font)
        alone = Image.new("L", image.size, 0)
        ImageDraw.Draw(alone).text((x, 20 * scale), char, fill=255, font=font)
        ink_box = alone.point(lambda v: 255 if v > 127 else 0).getbbox()
        if ink_box and char.isdigit():
            left, top, right, bottom = ink_box
            boxes.append((left, top, right - left, bottom - top))
        x += font.getlength(char)
    return encode(image), boxes


def assert_box_near(found, expected, slack: float, what: str) -> None:
    assert all(abs(a - b) <= slack for a, b in zip(found, expected)), (
        f"{what}: box {found}, expected about {expected}")


@pytest.mark.parametrize("text", ["407", "12", "90817", "365 28"])
def test_digits_come_left_to_right_with_their_boxes(text):
    data, boxes = written(text)
    digits = to_mnist_digits(data)
    assert len(digits) == len(boxes), f"{text}: {len(digits)} digits found"
    for (image, box), expected, char in zip(digits, boxes, text.replace(" ", "")):
        assert image.shape == (28, 28) and image.dtype == np.float32
        assert image.max() > 0.9 and image[0].max() == 0
        assert_box_near(box, expected, 4, char)


def test_boxes_are_in_the_original_pixels_of_a_big_upload():
    """The pipeline works on a reduced copy; the boxes are scaled back to the upload."""
    data, boxes = written("58", scale=10)  # ~1300 pixels wide: reduced 5x to work on
    digits = to_mnist_digits(data)
    assert len(digits) == 2
    for (_, box), expected in zip(digits, boxes):
        assert_box_near(box, expected, 12, "58 at 10x")


def test_each_digit_is_normalised_like_a_single_upload():
    data, boxes = written("47")
    first = to_mnist_digits(data)[0][0]
    alone, _ = written("4")
    assert np.abs(first - to_mnist(alone)).mean() < 0.02


def test_light_digits_on_dark_paper_and_jpeg():
    data, boxes = written("2024", ink=230, paper=30)
    photo = encode(Image.open(io.BytesIO(data)), "JPEG")
    assert len(to_mnist_digits(photo)) == 4


def test_pieces_of_one_digit_stay_together():
    """A 5 whose flag is lifted off the stroke, and a 4 drawn in two strokes, are one digit
    each; the pieces of different digits are not merged."""
    image = Image.new("L", (400, 200), 255)
    draw = ImageDraw.Draw(image)
    draw.line([(60, 40), (120, 40)], fill=0, width=10)  # the 5's flag, apart
    draw.line([(60, 60), (60, 100), (110, 100), (120, 140), (60, 160)], fill=0, width=10)
    draw.line([(230, 40), (200, 120), (280, 120)], fill=0, width=10)  # the 4's first stroke
    draw.line([(260, 80), (260, 170)], fill=0, width=10)  # and its second
    boxes = [box for _, box in to_mnist_digits(encode(image))]
    assert len(boxes) == 2, boxes
    assert_box_near(boxes[0], (55, 35, 70, 130), 4, "the 5 with its flag")
    assert_box_near(boxes[1], (195, 35, 90, 140), 6, "the 4 of two strokes")


def test_dots_dashes_and_specks_are_not_digits():
    data, boxes = written("3.14-2")
    assert len(to_mnist_digits(data)) == 4


def test_too_many_digits():
    data, _ = written("123456789012")
    with pytest.raises(TooManyDigits) as info:
        to_mnist_digits(data, max_digits=10)
    assert info.value.code == "too_many_digits" and "12" in str(info.value)
    assert len(to_mnist_digits(data, max_digits=12)) == 12


def test_blank_has_no_digit():
    with pytest.raises(NoDigitFound):
        to_mnist_digits(encode(Image.new("L", (300, 100), 250)))


def test_mnist_digits_side_by_side(mnist_dir):
    """Numbers written with MNIST test digits, as bench/uploads.py builds them: split right."""
    import importlib.util
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench" / "uploads.py"
    spec = importlib.util.spec_from_file_location("bench_uploads", bench)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    images = module.read_idx(module._find(mnist_dir, "t10k-images-idx3-ubyte"))[:2000]
    labels = module.read_idx(module._find(mnist_dir, "t10k-labels-idx1-ubyte"))[:2000]
    numbers = module.build_number_set(40, seed=3, mnist=(images, labels))
    counts = [len(to_mnist_digits(n.data)) == len(n.tags["number"]) for n in numbers]
    assert np.mean(counts) >= 0.95, f"{np.mean(counts):.0%} split into the right count"
