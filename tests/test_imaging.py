"""server.imaging: every accepted format and mode, polarity, transparency, EXIF orientation,
placement, tight crops, small scans enlarged, specks, centring, the errors, idempotence on
MNIST, the hard corpus never refused, realistic uploads. (Hostile files: test_hostile.py;
written numbers: test_segment.py.)"""

from __future__ import annotations

import gzip
import importlib.util
import io
import struct
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from server import imaging
from server.imaging import (
    ImageError,
    ImageTooLarge,
    InvalidImage,
    NoDigitFound,
    UnsupportedFormat,
    to_mnist,
    to_png,
)

REPO = Path(__file__).resolve().parents[1]

# A "7" as a polyline in a 100x100 design space: bar, then the stem.
SEVEN = [(25, 20), (75, 20), (45, 85)]
# A "4": the open stroke, then the vertical.
FOUR = [[(55, 15), (25, 60), (80, 60)], [(62, 35), (62, 90)]]


def draw_digit(size=(200, 160), box=(50, 20, 120, 120), *, strokes=None, width=12,
               ink=20, paper=235, mode="L", angle=0.0) -> Image.Image:
    """A digit drawn with round thick lines; strokes are in a 100x100 space mapped onto box."""
    strokes = strokes or [SEVEN]
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    x0, y0, x1, y1 = box
    for stroke in strokes:
        points = [(x0 + (x1 - x0) * x / 100, y0 + (y1 - y0) * y / 100) for x, y in stroke]
        draw.line(points, fill=ink, width=width, joint="curve")
        for x, y in points:  # round caps
            r = width / 2
            draw.ellipse((x - r, y - r, x + r, y + r), fill=ink)
    if angle:
        image = image.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=paper)
    return image.convert(mode) if mode != "L" else image


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def centre_of_mass(image: np.ndarray) -> tuple[float, float]:
    total = image.sum()
    idx = np.arange(image.shape[0])
    return float((image.sum(1) * idx).sum() / total), float((image.sum(0) * idx).sum() / total)


def assert_close(a: np.ndarray, b: np.ndarray, tol: float, what: str) -> None:
    diff = float(np.abs(a - b).mean())
    assert diff < tol, f"{what}: mean |difference| {diff:.4f} from the reference, expected < {tol}"


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    """The 7 drawn dark on light, as a greyscale PNG: what every variant should turn into."""
    return to_mnist(encode(draw_digit()))


# --- the output -----------------------------------------------------------------------------


def test_output_is_mnist_like(reference):
    assert reference.shape == (28, 28) and reference.dtype == np.float32
    assert reference.min() >= 0 and reference.max() <= 1
    assert reference.max() > 0.95, "ink should be bright, as in MNIST"
    assert reference[0].max() == 0 and reference[:, 0].max() == 0, "paper should be black"
    rows = np.flatnonzero(reference.any(1))
    cols = np.flatnonzero(reference.any(0))
    assert max(rows[-1] - rows[0], cols[-1] - cols[0]) + 1 == 20, "long side fills the 20 box"


@pytest.mark.parametrize("size, box", [
    ((200, 160), (50, 20, 120, 120)),
    ((640, 480), (10, 10, 130, 180)),  # top-left corner
    ((640, 480), (480, 260, 620, 470)),  # bottom-right corner
    ((40, 36), (8, 4, 30, 32)),  # tiny upload
    ((1500, 2000), (300, 700, 1100, 1900)),  # big photo
])
def test_centre_of_mass_lands_on_pixel_14_14(size, box):
    width = max(3, (box[3] - box[1]) // 8)
    image = to_mnist(encode(draw_digit(size, box, width=width)))
    cy, cx = centre_of_mass(image)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5, f"centre of mass at ({cy:.2f}, {cx:.2f})"


@pytest.mark.parametrize("size, box", [
    ((640, 480), (10, 10, 130, 180)),
    ((640, 480), (480, 260, 620, 470)),
    ((1500, 2000), (300, 700, 1100, 1900)),
    ((90, 90), (30, 20, 65, 70)),
])
def test_position_and_size_do_not_matter(reference, size, box):
    scale = (box[3] - box[1]) / 100
    image = to_mnist(encode(draw_digit(size, box, width=max(2, round(12 * scale)))))
    assert_close(image, reference, 0.04, f"digit at {box} in {size}")


def test_strokes_thin_and_thick_are_brought_to_mnist_width():
    """A pen line and a fat marker both end up with strokes of MNIST's width (1.3 - 3 px)."""
    for width in (2, 6, 14, 26):
        image = to_mnist(encode(draw_digit((400, 400), (80, 60, 280, 340), width=width)))
        measured = imaging.stroke_width(image > 0.5)
        assert 1.2 <= measured <= 3.2, f"stroke {width} px drawn -> {measured:.2f} px in 28x28"


# --- formats and modes ----------------------------------------------------------------------


@pytest.mark.parametrize("fmt, params, tol", [
    ("PNG", {}, 0.01),
    ("JPEG", {"quality": 80}, 0.06),
    ("GIF", {}, 0.02),
    ("BMP", {}, 0.01),
    ("WEBP", {"quality": 80}, 0.06),
    ("WEBP", {"lossless": True}, 0.01),
    ("TIFF", {}, 0.01),
    ("TIFF", {"compression": "tiff_lzw"}, 0.01),
])
def test_every_accepted_format(reference, fmt, params, tol):
    image = to_mnist(encode(draw_digit(mode="RGB"), fmt, **params))
    assert_close(image, reference, tol, fmt)


def _sixteen_bit(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image, dtype=np.uint16) * 257)


def _float32(image: Image.Image) -> Image.Image:
    return Image.fromarray(np.asarray(image, dtype=np.float32) / 255, mode="F")


@pytest.mark.parametrize("name, make, fmt", [
    ("L", lambda im: im, "PNG"),
    ("RGB", lambda im: im.convert("RGB"), "PNG"),
    ("RGBA opaque", lambda im: im.convert("RGBA"), "PNG"),
    ("LA opaque", lambda im: im.convert("LA"), "PNG"),
    ("P", lambda im: im.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
    ("1", lambda im: im.point(lambda v: 255 if v > 128 else 0).convert("1"), "PNG"),
    ("I;16 PNG", _sixteen_bit, "PNG"),
    ("I;16 TIFF", _sixteen_bit, "TIFF"),
    ("I 32-bit TIFF", lambda im: Image.fromarray(np.asarray(im, dtype=np.int32) * 65793), "TIFF"),
    ("F float TIFF", _float32, "TIFF"),
    ("CMYK JPEG", lambda im: im.convert("CMYK"), "JPEG"),
    ("CMYK TIFF", lambda im: im.convert("CMYK"), "TIFF"),
])
def test_every_mode(reference, name, make, fmt):
    data = encode(make(draw_digit()), fmt)
    tol = 0.06 if fmt == "JPEG" or name == "1" else 0.015
    assert_close(to_mnist(data), reference, tol, name)


def test_coloured_ink_on_coloured_paper(reference):
    gray = np.asarray(draw_digit(), dtype=np.float32) / 255
    ink, paper = np.array([20, 40, 150]), np.array([250, 240, 200])  # blue pen, yellowish pad
    rgb = paper + (ink - paper) * (1 - gray[..., None])
    data = encode(Image.fromarray(rgb.astype(np.uint8), "RGB"), "JPEG", quality=90)
    assert_close(to_mnist(data), reference, 0.04, "blue on yellow")


def test_gif_uses_the_first_frame(reference):
    first = draw_digit().convert("P")
    second = draw_digit(strokes=FOUR).convert("P")
    data = encode(first, "GIF", save_all=True, append_images=[second], duration=100, loop=0)
    assert_close(to_mnist(data), reference, 0.02, "animated GIF")


def test_multi_picture_jpeg_from_a_phone(reference):
    image = draw_digit(mode="RGB")
    data = encode(image, "MPO", save_all=True, append_images=[image])
    assert_close(to_mnist(data), reference, 0.06, "MPO")


@pytest.mark.parametrize("orientation, transpose", [
    (3, Image.Transpose.ROTATE_180),
    (6, Image.Transpose.ROTATE_90),  # stored turned left: the viewer turns it right
    (8, Image.Transpose.ROTATE_270),
    (2, Image.Transpose.FLIP_LEFT_RIGHT),
])
def test_exif_orientation_is_honoured(reference, orientation, transpose):
    stored = draw_digit(mode="RGB").transpose(transpose)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(stored, "JPEG", quality=90, exif=exif.tobytes())
    assert_close(to_mnist(data), reference, 0.04, f"EXIF orientation {orientation}")
    sideways = to_mnist(encode(stored, "JPEG", quality=90))  # the same pixels, no tag
    assert np.abs(sideways - reference).mean() > 0.05, "the test image must not be symmetric"


# --- polarity, paper, transparency ----------------------------------------------------------


@pytest.mark.parametrize("ink, paper", [(20, 235), (235, 20), (90, 160), (160, 90), (0, 255),
                                        (255, 0)])
def test_polarity_is_decided_from_the_background(reference, ink, paper):
    image = to_mnist(encode(draw_digit(ink=ink, paper=paper)))
    assert_close(image, reference, 0.02, f"ink {ink} on paper {paper}")


def test_grey_noisy_paper_with_a_lighting_gradient(reference):
    rng = np.random.default_rng(0)
    digit = np.asarray(draw_digit((400, 320), (100, 40, 240, 240), width=24), np.float32)
    gradient = np.linspace(-50, 30, 400)[None, :] + np.linspace(-20, 20, 320)[:, None]
    photo = digit * 0.6 + 60 + gradient + rng.normal(0, 8, digit.shape)
    data = encode(Image.fromarray(np.clip(photo, 0, 255).astype(np.uint8)), "JPEG", quality=70)
    assert_close(to_mnist(data), reference, 0.06, "grey noisy paper")


@pytest.mark.parametrize("stroke", [(0, 0, 0), (255, 255, 255), (30, 60, 200)])
def test_transparent_canvas_with_dark_or_light_strokes(reference, stroke):
    coverage = 255 - np.asarray(draw_digit(ink=0, paper=255))
    rgba = np.zeros(coverage.shape + (4,), dtype=np.uint8)
    rgba[..., :3] = stroke
    rgba[..., 3] = coverage  # transparent paper, anti-aliased strokes
    image = to_mnist(encode(Image.fromarray(rgba, "RGBA")))
    assert_close(image, reference, 0.02, f"strokes {stroke} on a transparent canvas")


def test_transparency_in_palette_and_grey_images(reference):
    drawing = draw_digit(ink=0, paper=255)
    palette = drawing.convert("P", palette=Image.Palette.ADAPTIVE, colors=8)
    white = palette.getpixel((0, 0))
    assert_close(to_mnist(encode(palette, "PNG", transparency=white)), reference, 0.03,
                 "palette PNG, paper transparent")
    assert_close(to_mnist(encode(palette, "GIF", transparency=white)), reference, 0.03,
                 "GIF, paper transparent")
    assert_close(to_mnist(encode(drawing, "PNG", transparency=255)), reference, 0.03,
                 "grey PNG with tRNS")
    la = Image.merge("LA", [drawing, Image.eval(drawing, lambda v: 255 - v)])
    assert_close(to_mnist(encode(la)), reference, 0.03, "LA, dark strokes on transparency")


def test_opaque_paper_with_transparent_margins(reference):
    drawing = draw_digit(ink=0, paper=255).convert("RGBA")
    framed = Image.new("RGBA", (260, 220), (0, 0, 0, 0))
    framed.paste(drawing, (30, 30))
    assert_close(to_mnist(encode(framed)), reference, 0.03, "opaque sheet in transparency")


@pytest.mark.parametrize("angle", [4, 8])
@pytest.mark.parametrize("table", [30, 120, 250])
def test_photo_of_a_sheet_lying_on_a_table(reference, table, angle):
    """The border is the table, not the paper: the sheet's grey level is the paper's, and the
    polarity the writing's against it (turned 8 degrees on a white table, the table's corners
    within the sheet's box outweighed the 7: it was read inverted, an outline of the sheet)."""
    rng = np.random.default_rng(5)
    photo = Image.new("L", (360, 320), table)
    sheet = draw_digit((300, 260), (90, 40, 210, 220), width=18, ink=35, paper=210)
    photo.paste(sheet.rotate(angle, expand=True, fillcolor=table), (20, 20))
    pixels = np.asarray(photo, dtype=np.float32) + rng.normal(0, 4, (320, 360))
    data = encode(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), "JPEG", quality=85)
    image = to_mnist(data)
    reference_rotated = to_mnist(encode(sheet.rotate(angle, expand=True, fillcolor=210)))
    assert_close(image, reference_rotated, 0.05, f"sheet on a table of grey {table}")


@pytest.mark.parametrize("table", [30, 120])
def test_a_sheet_held_by_a_thumb_is_still_a_sheet(table):
    """A thumb over the sheet's edge makes the sheet's outline concave, like a fat digit's;
    its writing is still pen strokes, and read as the sheet's ink, even in ink as dark as the
    table around it."""
    photo = Image.new("L", (360, 320), table)
    sheet = draw_digit((300, 260), (90, 40, 210, 220), width=18, ink=35, paper=210)
    photo.paste(sheet.rotate(8, expand=True, fillcolor=table), (20, 20))
    ImageDraw.Draw(photo).ellipse((150, 0, 210, 70), fill=table)
    expected = to_mnist(encode(sheet.rotate(8, expand=True, fillcolor=210)))
    assert _correlation(to_mnist(encode(photo)), expected) > 0.95


def test_tightly_cropped_fat_digit_is_not_taken_for_a_sheet(reference):
    """A digit whose ink covers most of a tight crop is still ink, not paper."""
    fat = draw_digit((100, 100), (10, 8, 90, 92), strokes=[[(20, 25), (80, 25), (45, 85)]],
                     width=46)
    ink_fraction = float(np.mean(np.asarray(fat) < 128))
    assert ink_fraction > 0.5
    image = to_mnist(encode(fat))
    # a 7 however fat (taken for a sheet, the paper would come out as ink: correlation <= 0)
    assert np.corrcoef(image.ravel(), reference.ravel())[0, 1] > 0.5


def _fat_eight(size: tuple[int, int], ring: int, paper: int) -> Image.Image:
    """A marker-fat 8 filling most of its picture: two stacked rings ``ring`` px thick, whose
    counters are narrow ovals of paper."""
    w, h = size
    image = Image.new("L", size, paper)
    draw = ImageDraw.Draw(image)
    draw.ellipse((w * 0.1, h * 0.04, w * 0.9, h * 0.5), outline=25, width=ring)
    draw.ellipse((w * 0.06, h * 0.44, w * 0.94, h * 0.96), outline=25, width=ring)
    return image


@pytest.mark.parametrize("paper", [150, 235])
@pytest.mark.parametrize("size", [(170, 260), (340, 520)])
def test_a_fat_digit_filling_its_picture_is_not_taken_for_a_sheet(size, paper):
    """Dark ink is most of the picture and the paper shows around it and through its counters:
    a dark sheet on a lighter table, with the counters for its writing, was what the paper
    stage saw (a fat 8 read as two dots). The region is not convex and what is inside it is
    no pen's stroke: it is a digit, its two counters holes in the ink."""
    image = _fat_eight(size, ring=round(size[0] / 3.2), paper=paper)
    assert np.mean(np.asarray(image) < 128) > 0.5
    result = to_mnist(encode(image))
    pieces, holes = imaging.label(result > 0.4)[1], imaging.label(result <= 0.4)[1]
    assert (pieces, holes) == (1, 3), "an 8: one piece of ink, the outside and two counters"


# --- tight crops, low-resolution scans, the hard corpus ------------------------------------


def _tight(image: Image.Image, margin: int = 0) -> Image.Image:
    """Cropped to the ink (dark pixels) with ``margin`` pixels of paper left around it."""
    left, top, right, bottom = image.point(lambda v: 255 if v < 128 else 0).getbbox()
    return image.crop((left - margin, top - margin, right + margin, bottom + margin))


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.mark.parametrize("margin", [0, 1, 2])
@pytest.mark.parametrize("ink, paper", [(20, 235), (235, 20)])
def test_tight_crops_touching_the_edges_are_read(reference, margin, ink, paper):
    image = _tight(draw_digit(ink=min(ink, paper), paper=max(ink, paper)), margin)
    if ink > paper:
        image = Image.eval(image, lambda v: 255 - v)
    result = to_mnist(encode(image))
    assert _correlation(result, reference) > 0.9, f"margin {margin}, ink {ink}"


@pytest.mark.parametrize("side", [8, 12, 16])
@pytest.mark.parametrize("resample", ["NEAREST", "BILINEAR", "BICUBIC"])
def test_small_scans_enlarged_keep_their_strokes_whole(reference, side, resample):
    """A digit scanned at 8-16 pixels and enlarged: read, one piece, like the reference."""
    digit = _tight(draw_digit(width=16), 1)
    small = digit.resize((side * digit.width // digit.height, side), Image.Resampling.BOX)
    big = small.resize((small.width * 12, small.height * 12), Image.Resampling[resample])
    result = to_mnist(encode(big))
    # an 8-pixel stroke is partly grey blocks: a quarter of full ink still joins it up
    assert imaging.label(result > 0.25)[1] == 1, "the strokes broke apart"
    assert _correlation(result, reference) > 0.75


def test_ink_along_the_border_does_not_pass_for_paper(reference):
    """A digit filling a blurry 8x8 enlargement: its border is half ink (the paper fit's
    residual is ink, not noise), and it is still read, not refused."""
    digit = _tight(draw_digit(width=18))
    small = digit.resize((8, 8), Image.Resampling.BOX)
    result = to_mnist(encode(small.resize((128, 128), Image.Resampling.BICUBIC)))
    assert _correlation(result, reference) > 0.7


def _small_scan(side: int, *, width: int = 16, threshold: int | None = None) -> Image.Image:
    """The 7 cropped to its ink (no margin), scanned at ``side`` pixels tall (box filter),
    binarised below ``threshold`` when one is given (a fax, a 1-bit scanner)."""
    digit = _tight(draw_digit(width=width))
    small = digit.resize((round(side * digit.width / digit.height), side), Image.Resampling.BOX)
    return small if threshold is None else small.point(lambda v: 0 if v < threshold else 255)


@pytest.mark.parametrize("side", [8, 10, 12, 16])
@pytest.mark.parametrize("threshold", [None, 160])
def test_small_scans_uploaded_as_they_are_are_read(reference, side, threshold):
    """A scan 8-16 pixels tall, uploaded at that size: enlarged before the paper stage, it is
    read like the reference (at its own size, grey 8 and 10 pixel scans were refused)."""
    result = to_mnist(encode(_small_scan(side, threshold=threshold)))
    assert _correlation(result, reference) > 0.75


@pytest.mark.parametrize("side", [8, 10, 12])
@pytest.mark.parametrize("threshold", [None, 160])
def test_a_1_scanned_small_and_cropped_to_its_stroke_is_read(side, threshold):
    """A 1 scanned at 8-12 pixels tall and cropped to its stroke is a picture 2-3 pixels
    wide: a digit, not a speck (such pictures were refused outright, 14 of the bench's 1,000
    scans on one seed). Framed, it is MNIST's upright bar."""
    pen = Image.new("L", (40, 120), 255)
    ImageDraw.Draw(pen).line([(26, 8), (14, 112)], fill=0, width=12)  # slanted a little
    pen = _tight(pen)
    small = pen.resize((max(2, round(side * pen.width / pen.height)), side), Image.Resampling.BOX)
    if threshold is not None:
        small = small.point(lambda v: 0 if v < threshold else 255)
    assert small.width in (2, 3)
    result = to_mnist(encode(small))
    rows, cols = np.nonzero(result > 0.5)
    assert rows.max() - rows.min() + 1 >= 18 and cols.max() - cols.min() + 1 <= 6


@pytest.mark.parametrize("width", [1, 2, 3])
def test_a_picture_needs_the_height_of_a_digit_and_two_columns(width):
    """The narrow picture's limits: a single column of pixels holds no digit (a rule, a
    sliver), nor does a picture under MIN_HEIGHT tall, however wide."""
    bar = Image.new("L", (width, 12), 0)
    if width == 1:
        with pytest.raises(imaging.NoDigitFound):
            to_mnist(encode(Image.new("L", (1, 12), 0)))
    with pytest.raises(imaging.NoDigitFound):
        to_mnist(encode(bar.resize((12, 3))))


@pytest.mark.parametrize("side", [9, 11])
@pytest.mark.parametrize("enlarge", [None, "NEAREST", "BILINEAR"])
def test_thin_ink_along_the_border_of_a_small_scan_keeps_its_polarity(reference, side, enlarge):
    """A thin-stroked digit binarised at 9-11 pixels with no margin: a third of its border is
    ink, the plane fitted to the border runs between ink and paper, and the paper used to be
    taken for the ink (an inverted picture, correlation 0.1-0.3). The flat paper tells."""
    small = _small_scan(side, width=10, threshold=100)
    if enlarge:
        small = small.resize((small.width * 8, small.height * 8), Image.Resampling[enlarge])
    result = to_mnist(encode(small))
    assert _correlation(result, reference) > 0.7


def test_the_bench_scans_say_how_much_ink_is_left():
    """bench.corpora's scans tag what is left to read: a hairline scanned grey at 8-16 px
    keeps under 10 pixels of ink, a marker-drawn 7 more. Binarised, the hairline stays: a
    1-bit scanner sets its threshold from the page's contrast, it does not erase the writing
    (a fixed threshold left 66 of the bench's 1,000 scans blank or a few dots)."""
    from bench import corpora

    rng = np.random.default_rng(0)
    hairline = np.zeros((300, 200), dtype=np.float32)
    hairline[20:280, 100] = 1
    marker = 1 - np.asarray(draw_digit(width=24), dtype=np.float32) / 255
    scans = [corpora.scan(hairline, rng) for _ in range(40)]
    assert {t["binary"] for _, t in scans} == {"yes", "no"}
    for data, t in scans:
        if t["binary"] == "no":
            assert t["ink"] == "0-9 px", t
            continue
        dark = np.asarray(Image.open(io.BytesIO(data)).convert("L")) < 128
        rows = np.flatnonzero(dark.any(axis=1))
        assert len(rows) >= 0.6 * dark.shape[0], t  # the line, top to bottom
    for _ in range(20):
        assert corpora.scan(marker, rng)[1]["ink"] == "10+ px"


def _hard_set(count: int, seed: int, mnist=None):
    uploads = _bench_uploads()
    try:
        uploads.fonts()
    except SystemExit as exc:
        pytest.skip(str(exc))
    return uploads.build_hard_set(count, seed, mnist)


def test_hard_corpus_is_never_refused():
    """Tight crops, small scans enlarged every way, fat markers, blur, both polarities: every
    one gives a digit (the model may still misread some; bench/uploads.py measures that)."""
    for upload in _hard_set(120, seed=11):
        to_mnist(upload.data)  # raises on a refusal


def test_hard_corpus_of_mnist_digits_is_never_refused(mnist_dir):
    uploads = _bench_uploads()
    images = uploads.read_idx(uploads._find(mnist_dir, "t10k-images-idx3-ubyte"))[:500]
    labels = uploads.read_idx(uploads._find(mnist_dir, "t10k-labels-idx1-ubyte"))[:500]
    for upload in _hard_set(120, seed=12, mnist=(images, labels)):
        to_mnist(upload.data)


# --- specks and empty images ----------------------------------------------------------------


def test_specks_are_ignored(reference):
    image = draw_digit((300, 240), (100, 50, 200, 200), width=16)
    clean = to_mnist(encode(image))
    draw = ImageDraw.Draw(image)
    for x, y in [(10, 10), (280, 20), (20, 220), (270, 225), (150, 15), (260, 120)]:
        draw.ellipse((x, y, x + 3, y + 3), fill=20)  # dust and dots of ink
    specks = to_mnist(encode(image))
    assert_close(specks, clean, 0.005, "digit with specks, against the same digit without")
    # the same 7 drawn smaller is close too (found at half resolution both, at other scales)
    assert_close(specks, reference, 0.04, "digit with specks")


def test_salt_and_pepper_noise_is_ignored(reference):
    rng = np.random.default_rng(1)
    pixels = np.asarray(draw_digit((300, 240), (100, 50, 200, 200), width=16)).copy()
    noise = rng.random(pixels.shape)
    pixels[noise < 0.002] = 0
    pixels[noise > 0.998] = 255
    assert_close(to_mnist(encode(Image.fromarray(pixels))), reference, 0.04, "salt and pepper")


@pytest.mark.parametrize("name, image", [
    ("white", Image.new("L", (120, 90), 255)),
    ("black (all ink)", Image.new("L", (120, 90), 0)),
    ("grey", Image.new("RGB", (64, 64), (128, 120, 110))),
    ("one pixel", Image.new("L", (1, 1), 0)),
    ("transparent", Image.new("RGBA", (50, 50), (0, 0, 0, 0))),
    ("faint paper texture",
     Image.fromarray((200 + np.random.default_rng(2).normal(0, 3, (80, 80))).astype(np.uint8))),
])
def test_blank_or_uniform_images_have_no_digit(name, image):
    with pytest.raises(NoDigitFound) as info:
        to_mnist(encode(image))
    assert info.value.code == "no_digit_found"


# --- bad input ------------------------------------------------------------------------------


def _chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def _png_header(width: int, height: int, idat: bool = True) -> bytes:
    """A PNG declaring width x height (8-bit grey) with a token kilobyte of pixel data."""
    ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
    data = _chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) if idat else b""
    return b"\x89PNG\r\n\x1a\n" + ihdr + data + _chunk(b"IEND", b"")


@pytest.mark.parametrize("name, data", [
    ("empty", b""),
    ("text", b"hello, this is not an image"),
    ("random bytes", np.random.default_rng(3).bytes(2000)),
    ("PNG signature only", b"\x89PNG\r\n\x1a\n"),
    ("PNG header, no pixels", _png_header(64, 64, idat=False)),
    ("PNG, too few pixels", _png_header(64, 64)),
    ("truncated PNG", encode(draw_digit())[:300]),
    ("truncated JPEG", encode(draw_digit(), "JPEG")[:400]),
    ("truncated GIF", encode(draw_digit(), "GIF")[:200]),
    ("truncated WebP", encode(draw_digit(), "WEBP")[:100]),
    ("JPEG header then junk", b"\xff\xd8\xff\xe0" + b"\x00" * 100),
])
def test_garbage_is_invalid_image(name, data):
    with pytest.raises(InvalidImage) as info:
        to_mnist(data)
    assert info.value.code == "invalid_image"


@pytest.mark.parametrize("fmt", ["ICO", "PPM", "TGA", "PCX", "QOI", "JPEG2000"])
def test_formats_we_do_not_accept_are_unsupported(fmt):
    try:
        data = encode(draw_digit(size=(64, 64), box=(10, 10, 50, 50), width=5, mode="RGB"), fmt)
    except (KeyError, OSError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    with pytest.raises(UnsupportedFormat) as info:
        to_mnist(data)
    assert info.value.code == "unsupported_format"


@pytest.mark.parametrize("data", [
    b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic",
    b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1",
    b"%PDF-1.7\n",
    b'<svg xmlns="http://www.w3.org/2000/svg"></svg>',
])
def test_phone_and_vector_formats_are_unsupported(data):
    with pytest.raises(UnsupportedFormat):
        to_mnist(data)


@pytest.mark.parametrize("width, height", [(100_000, 100_000), (7000, 6000), (2**31 - 1, 1),
                                           (30_000, 30_000)])
@pytest.mark.parametrize("pillow_limit", ["default", "disabled"])
def test_huge_declared_size_is_refused_before_decoding(width, height, pillow_limit, monkeypatch):
    """Our own check on the declared size, whatever Pillow's MAX_IMAGE_PIXELS says."""
    from PIL import ImageFile

    if pillow_limit == "disabled":
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    decodes = []
    original = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decodes.append(im) or original(im))
    with pytest.raises(ImageTooLarge) as info:
        to_mnist(_png_header(width, height))  # 1 kB of pixels: decoding would fail otherwise
    assert info.value.code == "image_too_large"
    assert not decodes, "no pixel may be decoded"


def test_huge_gif_and_bmp_headers_are_refused():
    gif = (b"GIF89a" + struct.pack("<HH", 65535, 65535) + b"\x00\x00\x00" + b","
           + struct.pack("<HHHH", 0, 0, 65535, 65535) + b"\x00\x08\x02\x4c\x01\x00;")
    bmp_info = struct.pack("<IiiHHIIiiII", 40, 60000, 60000, 1, 24, 0, 0, 0, 0, 0, 0)
    bmp = b"BM" + struct.pack("<IHHI", 154, 0, 0, 54) + bmp_info + bytes(100)
    for data in (gif, bmp):
        with pytest.raises(ImageTooLarge):
            to_mnist(data)


def test_concurrent_decoding_leaves_the_warning_filters_alone():
    """The decompression-bomb warning is silenced by one filter set at import, not by
    warnings.catch_warnings() around each decode, which is not thread-safe: under threads
    it left an "ignore everything" filter installed in the process."""
    from concurrent.futures import ThreadPoolExecutor

    before = list(warnings.filters)
    uploads = [encode(draw_digit(size=(120 + k, 100))) for k in range(8)] * 4
    with ThreadPoolExecutor(4) as pool:
        assert all(image.shape == (28, 28) for image in pool.map(to_mnist, uploads))
    assert warnings.filters == before


def test_max_pixels_is_configurable():
    data = encode(draw_digit((200, 160)))
    with pytest.raises(ImageTooLarge):
        to_mnist(data, max_pixels=200 * 160 - 1)
    assert to_mnist(data, max_pixels=200 * 160).shape == (28, 28)


def test_error_messages_are_user_facing_and_echo_nothing():
    secret = b"<script>alert('hi')</script> SECRET-INPUT"
    with pytest.raises(ImageError) as info:
        to_mnist(secret)
    message = str(info.value)
    assert "SECRET" not in message and "script" not in message
    assert "PNG" in message, "the message should say what to send instead"
    for cls in (InvalidImage, UnsupportedFormat, ImageTooLarge, NoDigitFound):
        assert issubclass(cls, ImageError) and issubclass(cls, ValueError)


def test_corrupted_files_never_raise_anything_else():
    """Flipped bytes in valid files: a result or an ImageError, never another exception."""
    rng = np.random.default_rng(4)
    originals = [encode(draw_digit(), fmt) for fmt in ("PNG", "JPEG", "GIF", "BMP", "WEBP",
                                                       "TIFF")]
    for original in originals:
        for _ in range(25):
            data = bytearray(original)
            for position in rng.integers(0, len(data), size=int(rng.integers(1, 8))):
                data[position] = int(rng.integers(0, 256))
            try:
                result = to_mnist(bytes(data))
            except ImageError:
                continue
            assert result.shape == (28, 28) and np.isfinite(result).all()


def test_large_photos_are_decoded_small(monkeypatch):
    """libjpeg decodes a 12 MP photo at 1/8 scale: the pipeline never sees more than
    WORK_SIZE a side."""
    photo = draw_digit((4000, 3000), (1200, 600, 2600, 2600), width=160, mode="RGB")
    data = encode(photo, "JPEG", quality=85)
    seen = []
    original = imaging.pipeline.extract_ink
    monkeypatch.setattr(imaging.pipeline, "extract_ink", lambda g: seen.append(g.shape)
                        or original(g))
    image = to_mnist(data)
    assert len(seen) == 1 and max(seen[0]) <= imaging.decode.WORK_SIZE, seen
    cy, cx = centre_of_mass(image)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


# --- to_png ---------------------------------------------------------------------------------


def test_to_png_round_trips(reference):
    data = to_png(reference)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.mode == "L" and image.size == (28, 28)
        pixels = np.asarray(image)
    assert np.abs(pixels / 255 - reference).max() <= 0.5 / 255 + 1e-6


def test_to_png_rejects_other_shapes():
    with pytest.raises(ValueError, match=r"\(28, 28\)"):
        to_png(np.zeros((28, 27)))


# --- MNIST itself: the pipeline must leave it (nearly) alone ---------------------------------


def _read_idx(path: Path) -> np.ndarray:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    ndim = raw[3]
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


@pytest.fixture(scope="module")
def mnist_test_images(mnist_dir) -> np.ndarray:
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"):
        if (mnist_dir / name).is_file():
            return _read_idx(mnist_dir / name)[:1000]
    pytest.skip(f"no t10k-images-idx3-ubyte(.gz) in {mnist_dir}")


def test_idempotent_on_mnist_digits(mnist_test_images):
    """MNIST test digits uploaded as 28x28 PNGs come back (almost) pixel for pixel."""
    differences = []
    for digit in mnist_test_images:
        image = to_mnist(encode(Image.fromarray(digit)))
        differences.append(np.abs(image - digit / 255).max())
    differences = np.array(differences)
    unchanged = np.mean(differences <= 0.05)
    assert unchanged >= 0.97, f"only {unchanged:.1%} of MNIST digits come back unchanged"
    assert np.median(differences) <= 0.02


def test_mnist_digits_enlarged_come_back_the_same(mnist_test_images):
    """An MNIST digit photographed bigger, dark on light: close to the original array."""
    differences = []
    for digit in mnist_test_images[:50]:
        big = Image.fromarray(255 - digit).resize((280, 280), Image.Resampling.BICUBIC)
        image = to_mnist(encode(big, "JPEG", quality=90))
        differences.append(np.abs(image - digit / 255).mean())
    assert np.mean(differences) < 0.045 and np.max(differences) < 0.1


# --- realistic uploads with a really trained model --------------------------------------------


def _bench_uploads():
    spec = importlib.util.spec_from_file_location("bench_uploads", REPO / "bench" / "uploads.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_realistic_uploads_are_recognised(trained_model_path):
    """Rendered digits in every font, format and polarity: the 2-epoch model gets most right."""
    uploads = _bench_uploads()
    try:
        uploads.fonts()
    except SystemExit as exc:
        pytest.skip(str(exc))
    from models import load

    module, metadata = load(trained_model_path)
    samples = uploads.build_set(100, seed=7)
    predicted, _, _ = uploads.evaluate_uploads(module, metadata["preprocessing"], samples)
    labels = np.array([s.label for s in samples])
    accuracy = float(np.mean(predicted == labels))
    wrong = [(s.label, int(p), s.tags) for s, p in zip(samples, predicted) if p != s.label]
    assert accuracy >= 0.85, f"accuracy {accuracy:.0%} on realistic uploads; wrong: {wrong[:5]}"
