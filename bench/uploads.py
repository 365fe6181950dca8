"""Accuracy on realistic uploads, and what the upload path costs on MNIST itself.

Two measurements, printed side by side in one run:

* realistic uploads: digits rendered with the fonts of Debian's DejaVu, Liberation and
  FreeFont packages, varied in size, position, rotation, stroke thickness, paper grey level,
  lighting gradient and noise, polarity (dark-on-light and light-on-dark), transparency and
  format (PNG, JPEG, WebP, transparent PNG), built deterministically from ``--seed``, then
  read through ``server.imaging.to_mnist`` -> ``models.to_model_input`` -> the model;
* hard uploads: the cases users meet that the above does not cover (``CASES``): digits
  cropped to the ink with 0-2 px of margin, scanned at 8x8 / 12x12 / 16x16 then enlarged
  (nearest, bilinear, bicubic), fat marker strokes, blur; from fonts and MNIST test digits;
* written numbers of 2-6 digits (fonts, and MNIST test digits side by side) read through
  ``to_mnist_digits``: the share read whole, and the share split into the right count;
* MNIST round trip (when ``--mnist-dir`` or $MNIST_DIR holds the test files): the test images
  encoded as 28x28 PNGs through ``to_mnist`` versus the arrays fed directly.

    python -m bench.uploads --model model.npz [--count 2000] [--hard-count 3000] [--seed 0]
                            [--mnist-dir DIR]

Per-font accuracy, about 400 uploads per font (49 fonts), enough to tell a font at 90% from
one at 95% (the 95% interval printed on the "lowest" line is about +-2.5 points there):

    python -m bench.uploads --model model.npz --count 19600 --by font --hard-count 0 \
                            --number-count 0 --handwriting-count 0 --not-digit-count 0

With a model file that has a decision (models.decision), every digit set also reports the
share refused as not a digit and the ECE of its answers, and the not-digit corpora of
bench/corpora.py and the trainer's generator (a seed training never uses) report the share
refused by kind.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from autodiff import no_grad
from bench import corpora
from bench.corpora import Upload
from models import ModelFileError, load, to_model_input
from models.decision import Decision, Scores, scores
from server.imaging import (
    ImageError,
    label,
    stroke_width,
    to_mnist,
    to_mnist_digits,
)
from trainer.report import expected_calibration_error
from trainer.synthetic import not_digits, pen_digits

FONT_DIRS = [Path("/usr/share/fonts/truetype") / name for name in
             ("dejavu", "liberation", "freefont")]
# DejaVu's math font has no upright text digits of its own style worth testing separately
EXCLUDED_FONTS = {"DejaVuMathTeXGyre.ttf"}
RENDER_SIZE = 160  # font size of the master rendering, before scaling to the upload


def fonts() -> list[Path]:
    """The TrueType fonts installed by the Debian packages, in a stable order."""
    found = sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob("*.ttf")
                   if p.name not in EXCLUDED_FONTS)
    if not found:
        raise SystemExit("no fonts in " + ", ".join(map(str, FONT_DIRS)) +
                         ": install fonts-dejavu-core, fonts-liberation and fonts-freefont-ttf")
    return found


def _pieces(mask: Image.Image) -> int:
    """Connected pieces of ink (at half resolution, which is plenty to see a break)."""
    half = np.asarray(mask.reduce(2)) > 100
    return label(half)[1]


def _holes(mask: Image.Image) -> int:
    """Pieces of background (the outside and each loop), at the resolution of ``_pieces``."""
    half = np.asarray(mask.reduce(2)) > 100
    return label(~half)[1]


def _glyph(digit: int, font_path: Path, rng: np.random.Generator) -> tuple[Image.Image, str, str]:
    """The digit as an 'L' coverage mask (255 = ink), thinned or thickened, then rotated;
    with the stroke and rotation categories."""
    font = ImageFont.truetype(str(font_path), RENDER_SIZE)
    left, top, right, bottom = font.getbbox(str(digit))
    pad = RENDER_SIZE // 3
    mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), str(digit), fill=255, font=font)
    # stroke: thin pen to fat marker, as a width relative to the glyph's height (MNIST's is
    # about 0.1-0.15); reached by repeated 3x3 erosion or dilation of the master rendering
    stroke = str(rng.choice(["thin", "regular", "regular", "thick"]))
    if stroke != "regular":
        target = (rng.uniform(0.03, 0.06) if stroke == "thin" else rng.uniform(0.15, 0.22))
        width = stroke_width(np.asarray(mask) > 127)
        steps = round((target * (bottom - top) - width) / 2)
        grow = ImageFilter.MaxFilter(3) if steps > 0 else ImageFilter.MinFilter(3)
        shape = (_pieces(mask), _holes(mask)) if steps < 0 else None
        for _ in range(abs(steps)):
            changed = mask.filter(grow)
            # a pen draws thin hairlines too: stop thinning before any stroke breaks apart or
            # vanishes, which changes the count of pieces or of holes (a bold 4's diagonal
            # thins away before its stem does, leaving a "+" labelled 4)
            if shape is not None and (_pieces(changed), _holes(changed)) != shape:
                break
            mask = changed
    angle = float(rng.uniform(-15, 15))
    mask = mask.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    box = mask.getbbox()
    rotation = "<5deg" if abs(angle) < 5 else "5-10deg" if abs(angle) < 10 else "10-15deg"
    return (mask.crop(box) if box else mask), stroke, rotation


def render(digit: int, font_path: Path, rng: np.random.Generator) -> Upload:
    """One upload of ``digit`` in ``font_path`` with randomly drawn conditions."""
    glyph, stroke, rotation = _glyph(digit, font_path, rng)
    width = int(rng.integers(48, 640))
    height = int(np.clip(width * rng.uniform(0.6, 1.6), 40, 800))
    fraction = rng.uniform(0.3, 0.9)  # digit height / image height
    gh = max(8, int(height * fraction))
    gw = max(2, int(glyph.width * gh / glyph.height))
    if gw > 0.95 * width:  # keep the whole digit in the frame
        gw = int(0.95 * width)
        gh = max(8, int(glyph.height * gw / glyph.width))
    glyph = glyph.resize((gw, gh), Image.Resampling.LANCZOS)
    x = int(rng.integers(0, max(1, width - gw)))
    y = int(rng.integers(0, max(1, height - gh)))
    coverage = np.zeros((height, width), dtype=np.float32)
    coverage[y:y + gh, x:x + gw] = np.asarray(glyph, dtype=np.float32)[:height - y, :width - x]
    coverage /= 255.0

    polarity = "dark-on-light" if rng.random() < 0.7 else "light-on-dark"
    if polarity == "dark-on-light":
        paper, ink = rng.uniform(150, 255), rng.uniform(0, 90)
    else:
        paper, ink = rng.uniform(0, 80), rng.uniform(170, 255)
    fmt = str(rng.choice(["png", "jpeg", "jpeg", "webp", "transparent-png"]))
    tags = {"font": font_path.stem, "stroke": stroke, "rotation": rotation, "polarity": polarity,
            "format": fmt, "size": "small" if gh < 40 else "large"}

    if fmt == "transparent-png":
        # a canvas drawing: strokes of one colour, the rest fully transparent
        rgba = np.zeros((height, width, 4), dtype=np.uint8)
        rgba[..., :3] = int(ink)
        rgba[..., 3] = np.rint(coverage * 255).astype(np.uint8)
        return Upload(_encode(Image.fromarray(rgba, mode="RGBA"), "PNG"), digit, tags)

    # lighting gradient across the page and sensor noise
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    slope = rng.uniform(-40, 40, size=2) / max(width, height)
    background = paper + slope[0] * (xx - width / 2) + slope[1] * (yy - height / 2)
    gray = background + (ink - background) * coverage
    gray += rng.normal(0, rng.uniform(0, 10), size=gray.shape)
    gray = np.clip(gray, 0, 255)
    if rng.random() < 0.4:  # coloured ink or tinted paper: photos are RGB
        tint = rng.uniform(0.85, 1.15, size=3)
        image = Image.fromarray(np.clip(gray[..., None] * tint, 0, 255).astype(np.uint8), "RGB")
    else:
        image = Image.fromarray(gray.astype(np.uint8), mode="L")
    if fmt == "jpeg":
        data = _encode(image, "JPEG", quality=int(rng.integers(40, 95)))
    elif fmt == "webp":
        data = _encode(image, "WEBP", quality=int(rng.integers(50, 95)))
    else:
        data = _encode(image, "PNG")
    return Upload(data, digit, tags)


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def build_set(count: int, seed: int = 0) -> list[Upload]:
    """``count`` uploads cycling through digits and fonts; the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    available = fonts()
    return [render(i % 10, available[(i // 10) % len(available)], rng) for i in range(count)]


# --- the hard corpus: what users upload that the realistic set above does not cover --------

CASES = ("tight-crop", "low-res-8", "low-res-12", "low-res-16", "thick-marker", "blur")
ENLARGE = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
           "bicubic": Image.Resampling.BICUBIC}


def _font_mask(digit: int, font_path: Path, rng: np.random.Generator) -> Image.Image:
    """The digit as an 'L' coverage mask (255 = ink) cropped to its ink, slightly rotated."""
    font = ImageFont.truetype(str(font_path), RENDER_SIZE)
    left, top, right, bottom = font.getbbox(str(digit))
    pad = RENDER_SIZE // 4
    mask = Image.new("L", (right - left + 2 * pad, bottom - top + 2 * pad), 0)
    ImageDraw.Draw(mask).text((pad - left, pad - top), str(digit), fill=255, font=font)
    mask = mask.rotate(float(rng.uniform(-8, 8)), resample=Image.Resampling.BICUBIC, expand=True)
    return mask.crop(mask.getbbox())


def _mnist_mask(image: np.ndarray) -> Image.Image:
    """An MNIST digit (ink bright) enlarged 6x with bicubic, cropped to its ink."""
    mask = Image.fromarray(image).resize((168, 168), Image.Resampling.BICUBIC)
    return mask.crop(mask.getbbox())


def _thicken(mask: Image.Image, fraction: float) -> Image.Image:
    """Grow the strokes to about ``fraction`` of the glyph's height (a fat marker)."""
    width = stroke_width(np.asarray(mask) > 127)
    steps = max(0, round((fraction * mask.height - width) / 2))
    padded = Image.new("L", (mask.width + 2 * steps, mask.height + 2 * steps), 0)
    padded.paste(mask, (steps, steps))
    for _ in range(steps // 2):  # two pixels a pass
        padded = padded.filter(ImageFilter.MaxFilter(5))
    return padded


def _on_paper(mask: Image.Image, size: tuple[int, int], at: tuple[int, int],
              rng: np.random.Generator) -> tuple[Image.Image, str]:
    """The coverage mask as ink on paper of a random grey level and polarity."""
    coverage = np.zeros((size[1], size[0]), dtype=np.float32)
    part = np.asarray(mask, dtype=np.float32)[:size[1] - at[1], :size[0] - at[0]] / 255
    coverage[at[1]:at[1] + part.shape[0], at[0]:at[0] + part.shape[1]] = part
    polarity = "dark-on-light" if rng.random() < 0.6 else "light-on-dark"
    if polarity == "dark-on-light":
        paper, ink = rng.uniform(170, 255), rng.uniform(0, 70)
    else:
        paper, ink = rng.uniform(0, 70), rng.uniform(180, 255)
    gray = paper + (ink - paper) * coverage + rng.normal(0, rng.uniform(0, 4), coverage.shape)
    return Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), mode="L"), polarity


def hard_upload(case: str, digit: int, mask: Image.Image, source: str,
                rng: np.random.Generator) -> Upload:
    """One upload of ``case`` (see CASES) made from a coverage mask of ``digit``."""
    tags = {"case": case, "source": source}
    if case == "thick-marker":
        mask = _thicken(mask, rng.uniform(0.2, 0.3))
    if case.startswith("low-res"):
        # scanned small: the digit, cropped to its ink with 0-2 px of margin, fits an s x s
        # image, which is then enlarged for the upload
        side = int(case.rsplit("-", 1)[1])
        scale = side / (max(mask.size) * (1 + 0.04 * rng.uniform(0, 2)))
        small = mask.resize((max(1, round(mask.width * scale)), max(1, round(mask.height * scale))),
                            Image.Resampling.BOX)
        at = ((side - small.width) // 2, (side - small.height) // 2)
        image, tags["polarity"] = _on_paper(small, (side, side), at, rng)
        enlarge = str(rng.choice(list(ENLARGE)))
        tags["enlarge"] = enlarge
        factor = int(rng.integers(4, 17))
        image = image.resize((side * factor, side * factor), ENLARGE[enlarge])
    else:
        height = int(rng.integers(28, 240))
        glyph = mask.resize((max(1, round(mask.width * height / mask.height)), height),
                            Image.Resampling.LANCZOS)
        if case == "tight-crop":  # cropped to the ink with 0-2 pixels of margin
            margin = [int(m) for m in rng.integers(0, 3, size=4)]
            size = (glyph.width + margin[0] + margin[2], glyph.height + margin[1] + margin[3])
            at = (margin[0], margin[1])
        else:  # thick-marker, blur: a digit on a page
            size = (int(glyph.width * rng.uniform(1.3, 3)), int(height * rng.uniform(1.2, 2.5)))
            at = (int(rng.integers(0, size[0] - glyph.width + 1)),
                  int(rng.integers(0, size[1] - glyph.height + 1)))
        image, tags["polarity"] = _on_paper(glyph, size, at, rng)
        if case == "blur":
            radius = float(rng.uniform(0.02, 0.06)) * height
            image = image.filter(ImageFilter.GaussianBlur(radius))
    fmt = "JPEG" if rng.random() < 0.3 else "PNG"
    tags["format"] = fmt.lower()
    params = {"quality": int(rng.integers(70, 95))} if fmt == "JPEG" else {}
    return Upload(_encode(image, fmt, **params), digit, tags)


def build_hard_set(count: int, seed: int = 0, mnist: tuple | None = None) -> list[Upload]:
    """``count`` uploads cycling through CASES, digits and sources (fonts, and MNIST test digits
    when ``mnist`` = (images, labels) is given); the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    available = fonts()
    uploads = []
    for i in range(count):
        case = CASES[i % len(CASES)]
        if mnist is not None and i % 2:
            images, labels = mnist
            k = int(rng.integers(0, len(labels)))
            digit, mask, source = int(labels[k]), _mnist_mask(images[k]), "mnist"
        else:
            digit = (i // len(CASES)) % 10
            font = available[int(rng.integers(0, len(available)))]
            mask, source = _font_mask(digit, font, rng), "font"
        uploads.append(hard_upload(case, digit, mask, source, rng))
    return uploads


def number_upload(digits: list[int], masks: list[Image.Image], source: str,
                  rng: np.random.Generator) -> Upload:
    """The digits' coverage masks side by side (scaled to one height, separated by gaps of
    5-40% of it, bottoms aligned within a few percent) as one upload of a written number."""
    height = int(rng.integers(40, 160))
    glyphs = [m.resize((max(1, round(m.width * height / m.height)), height),
                       Image.Resampling.LANCZOS) for m in masks]
    gaps = [int(height * rng.uniform(0.05, 0.4)) for _ in glyphs]
    margin = int(height * rng.uniform(0.1, 0.6))
    width = sum(g.width for g in glyphs) + sum(gaps[1:]) + 2 * margin
    canvas = Image.new("L", (width, height + 2 * margin + height // 10), 0)
    x = margin
    for glyph, gap in zip(glyphs, [0] + gaps[1:]):
        x += gap
        canvas.paste(glyph, (x, margin + int(rng.integers(0, height // 10 + 1))))
        x += glyph.width
    image, polarity = _on_paper(canvas, canvas.size, (0, 0), rng)
    fmt = "JPEG" if rng.random() < 0.3 else "PNG"
    params = {"quality": int(rng.integers(70, 95))} if fmt == "JPEG" else {}
    number = "".join(map(str, digits))
    return Upload(_encode(image, fmt, **params), int(number),
                  {"source": source, "digits": str(len(digits)), "polarity": polarity,
                   "number": number})


def build_number_set(count: int, seed: int = 0, mnist: tuple | None = None) -> list[Upload]:
    """``count`` written numbers of 2-6 digits, from one font each, or from MNIST test digits
    when ``mnist`` = (images, labels) is given (every other number)."""
    rng = np.random.default_rng(seed)
    available = fonts()
    uploads = []
    for i in range(count):
        length = int(rng.integers(2, 7))
        if mnist is not None and i % 2:
            images, labels = mnist
            picks = rng.integers(0, len(labels), size=length)
            digits = [int(labels[k]) for k in picks]
            masks, source = [_mnist_mask(images[k]) for k in picks], "mnist"
        else:
            digits = [int(d) for d in rng.integers(0, 10, size=length)]
            font = available[int(rng.integers(0, len(available)))]
            masks, source = [_font_mask(d, font, rng) for d in digits], "font"
        uploads.append(number_upload(digits, masks, source, rng))
    return uploads


def evaluate_numbers(module, preprocessing: dict, uploads: list[Upload]) -> dict:
    """Whole-number and digit-count accuracy of to_mnist_digits + one forward pass per number."""
    right = count_right = 0
    table: dict[str, list] = defaultdict(lambda: [0, 0])
    start = time.perf_counter()
    for upload in uploads:
        try:
            digits = to_mnist_digits(upload.data)
        except ImageError:
            digits = []
        read = ""
        if digits:
            read = "".join(map(str, predict(module, preprocessing,
                                            np.stack([image for image, _ in digits]))))
        expected = upload.tags["number"]
        right += read == expected
        count_right += len(read) == len(expected)
        for key in ("source", "digits"):
            cell = table[f"{key} {upload.tags[key]}"]
            cell[0] += read == expected
            cell[1] += 1
    return {"n": len(uploads), "right": right, "count_right": count_right,
            "ms": 1000 * (time.perf_counter() - start) / max(1, len(uploads)),
            "by": dict(sorted(table.items()))}


def predict(module, preprocessing: dict, images: np.ndarray) -> np.ndarray:
    """Predicted digits (the plain answer, refused or not) for float (N, 28, 28) images."""
    return score(module, preprocessing, images, None).probabilities.argmax(axis=1)


def score(module, preprocessing: dict, images: np.ndarray, decision: Decision | None) -> Scores:
    """The model's answers for float (N, 28, 28) images in [0, 1], as the server gives them."""
    logits = []
    with no_grad():
        for i in range(0, len(images), 1000):
            logits.append(module(to_model_input(images[i:i + 1000], preprocessing)).value)
    logits = np.concatenate(logits) if logits else np.zeros((0, module.dim_output))
    if decision is None and logits.shape[1] != 10:  # plain answers of a decision model
        decision = Decision(0.0)
    return scores(logits, decision)


def evaluate_uploads(module, preprocessing: dict, uploads: list,
                     decision: Decision | None = None):
    """(predictions with -1 where to_mnist refused, seconds spent in to_mnist, the Scores of
    every upload (to_mnist refusals scored as blank images: look at the predictions))."""
    images = np.zeros((len(uploads), 28, 28), dtype=np.float32)
    refused = np.zeros(len(uploads), dtype=bool)
    start = time.perf_counter()
    for i, upload in enumerate(uploads):
        try:
            images[i] = to_mnist(upload.data)
        except ImageError:
            refused[i] = True
    seconds = time.perf_counter() - start
    result = score(module, preprocessing, images, decision)
    predicted = result.probabilities.argmax(axis=1)
    predicted[refused] = -1
    return predicted, seconds, result


def digit_line(predicted: np.ndarray, labels: np.ndarray, result: Scores) -> str:
    """Refusals as not a digit (of the uploads to_mnist read) and the calibration of the
    answers (the plain answer's confidence)."""
    read = predicted >= 0
    confidence = result.probabilities.max(axis=1)
    ece = expected_calibration_error(confidence[read], (predicted == labels)[read])
    refused = int(np.sum(~result.is_digit & read))
    return (f"refused as not a digit {refused} ({100 * refused / max(read.sum(), 1):.2f}%), "
            f"ECE {100 * ece:.2f}%")


def refusal_table(uploads: list, predicted: np.ndarray, result: Scores, tag: str) -> str:
    """Per value of ``tag``: the share refused (not a digit, or no digit found by to_mnist),
    and the median confidence of those answered."""
    values = np.array([u.tags.get(tag, "-") for u in uploads])
    confidence = result.probabilities.max(axis=1)
    answered_mask = result.is_digit & (predicted >= 0)
    cells = []
    for v in sorted(set(values)):
        mask = values == v
        refused = float(np.mean(~answered_mask[mask]))
        answered = confidence[mask & answered_mask]
        median = f", answered at median {np.median(answered):.2f}" if len(answered) else ""
        cells.append(f"{v} {100 * refused:.1f}% refused ({int(mask.sum())}{median})")
    return "\n    ".join(cells)


def _rows(result: Scores, pick: np.ndarray) -> Scores:
    """The answers of the uploads at ``pick``."""
    return Scores(*(getattr(result, f)[pick] for f in
                    ("probabilities", "digit_probability", "digit_log_odds", "is_digit")))


def _as_uploads(images: np.ndarray, labels: np.ndarray, tags: list[dict] | None = None) -> list:
    """28x28 float images as PNG uploads (ink bright on black, as MNIST's)."""
    return [Upload(_encode(Image.fromarray(np.rint(x * 255).astype(np.uint8), "L"),
                                   "PNG"), int(y), (tags or [{}] * len(labels))[i] or
                           {"digit": str(int(y))})
            for i, (x, y) in enumerate(zip(images, labels))]


def _not_digit_uploads(count: int, seed: int) -> list:
    """The trainer's generated not-digits (trainer.synthetic), from a seed it never uses."""
    from trainer.synthetic import KINDS

    images, kind = not_digits(count, np.random.default_rng([seed, 98]))
    names = list(KINDS)
    return _as_uploads(images, np.full(count, -1), [{"kind": names[k]} for k in kind])


def _most_refused(uploads: list, predicted: np.ndarray, result: Scores, tags: list[str],
                  k: int = 4) -> str:
    """The categories of a digit set most often refused as not a digit (of those read)."""
    cells = []
    read = predicted >= 0
    for tag in tags:
        values = np.array([str(u.tags.get(tag, "")) if tag != "digit" else str(u.label)
                           for u in uploads])
        for v in set(values) - {""}:
            mask = (values == v) & read
            if mask.any():
                cells.append((float(np.mean(~result.is_digit[mask])), f"{tag}={v}",
                              int(mask.sum())))
    cells.sort(reverse=True)
    over = {tag: sum(1 for r, name, _ in cells if name.startswith(f"{tag}=") and r > 0.005)
            for tag in tags}
    counts = ", ".join(f"{tag} {over[tag]} of {sum(1 for c in cells if c[1].startswith(tag + '='))}"
                       for tag in tags)
    return ("  ".join(f"{name} {100 * r:.1f}% ({n})" for r, name, n in cells[:k])
            + f"  (over 0.5%: {counts})")


def read_idx(path: Path) -> np.ndarray:
    """An MNIST IDX file (gzipped or not) as a numpy array."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def mnist_roundtrip(module, preprocessing: dict, directory: Path, limit: int | None,
                    decision: Decision | None = None) -> dict:
    """Accuracy on the MNIST test set fed directly and uploaded as 28x28 PNGs."""
    images_path = _find(directory, "t10k-images-idx3-ubyte")
    labels_path = _find(directory, "t10k-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise SystemExit(f"no t10k-images-idx3-ubyte(.gz) and t10k-labels-idx1-ubyte(.gz) "
                         f"in {directory}")
    images = read_idx(images_path)[:limit]
    labels = read_idx(labels_path)[:limit]
    direct = predict(module, preprocessing, images.astype(np.float32) / 255.0)
    uploads = [Upload(_encode(Image.fromarray(x, mode="L"), "PNG"), int(y), {})
               for x, y in zip(images, labels)]
    uploaded, seconds, result = evaluate_uploads(module, preprocessing, uploads, decision)
    return {"n": len(labels), "direct": float(np.mean(direct == labels)),
            "uploaded": float(np.mean(uploaded == labels)),
            "changed": int(np.sum(direct != uploaded)), "ms": 1000 * seconds / len(labels),
            "line": digit_line(uploaded, labels, result)}


def breakdown(uploads: list[Upload], predicted: np.ndarray) -> dict[str, dict[str, tuple]]:
    """Accuracy per value of each tag: {tag: {value: (correct, total)}}."""
    table: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    for upload, guess in zip(uploads, predicted):
        for tag, value in list(upload.tags.items()) + [("digit", str(upload.label))]:
            cell = table[tag][value]
            cell[0] += int(guess == upload.label)
            cell[1] += 1
    return {tag: {v: tuple(c) for v, c in sorted(values.items())} for tag, values in table.items()}


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion: is a category with n samples below a bar?"""
    p, d = correct / n, 1 + z * z / n
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (p + z * z / (2 * n)) / d - half, (p + z * z / (2 * n)) / d + half


def lowest(table: dict[str, dict[str, tuple]], tags: list[str], k: int = 5) -> str:
    """The k least accurate categories of the given breakdowns, with n and 95% interval."""
    cells = sorted((c / n, tag, v, c, n) for tag in tags for v, (c, n) in table[tag].items())
    return "  ".join(f"{tag}={v} {100 * a:.1f}% ({n}, {100 * wilson(c, n)[0]:.0f}-"
                     f"{100 * wilson(c, n)[1]:.0f})" for a, tag, v, c, n in cells[:k])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.uploads",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="model.npz", help="model file (default model.npz)")
    parser.add_argument("--count", type=int, default=2000, help="realistic uploads to render")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mnist-dir", default=os.environ.get("MNIST_DIR"),
                        help="directory with the MNIST test files (default $MNIST_DIR)")
    parser.add_argument("--mnist-limit", type=int, default=None,
                        help="use only the first N MNIST test images")
    parser.add_argument("--by", default="format,polarity,stroke,rotation,size,digit,font",
                        help="comma-separated breakdowns of the realistic set to print")
    parser.add_argument("--hard-count", type=int, default=3000,
                        help="hard uploads to render: tight crops, low resolution, thick "
                             "marker, blur (half from MNIST test digits with --mnist-dir)")
    parser.add_argument("--number-count", type=int, default=500,
                        help="written numbers of 2-6 digits to read with to_mnist_digits")
    parser.add_argument("--hard-by", default="case,enlarge,source,polarity,format,digit",
                        help="comma-separated breakdowns of the hard set to print")
    parser.add_argument("--handwriting-count", type=int, default=2000,
                        help="pen-drawn digits and low-resolution scans (bench/corpora.py)")
    parser.add_argument("--not-digit-count", type=int, default=2400,
                        help="uploads that are not digits, by kind (bench/corpora.py), and as "
                             "many of the trainer's own generated ones (a seed it never uses)")
    args = parser.parse_args(argv)

    try:
        module, metadata = load(args.model)
    except ModelFileError as exc:
        raise SystemExit(f"{exc} (train one with `python -m trainer --out {args.model}`)") from None
    preprocessing = metadata.get("preprocessing")
    decision = Decision.from_metadata(metadata, module.dim_output)
    print(f"model {args.model}: {module!r}; decision: "
          + (f"threshold {decision.threshold:+.3f}, temperature {decision.temperature:.3f}"
             if decision else "none (answers a digit for anything)"))

    if args.mnist_dir:
        r = mnist_roundtrip(module, preprocessing, Path(args.mnist_dir), args.mnist_limit,
                            decision)
        print(f"MNIST test ({r['n']}): arrays {100 * r['direct']:.2f}%  "
              f"as 28x28 PNG via to_mnist {100 * r['uploaded']:.2f}%  "
              f"difference {100 * (r['direct'] - r['uploaded']):+.2f} points  "
              f"({r['changed']} predictions changed, {r['ms']:.2f} ms/image); {r['line']}")
    else:
        print("MNIST round trip skipped: pass --mnist-dir or set MNIST_DIR")

    mnist = None
    if args.mnist_dir and (args.hard_count or args.number_count or args.handwriting_count):
        directory = Path(args.mnist_dir)
        mnist = (read_idx(_find(directory, "t10k-images-idx3-ubyte")),
                 read_idx(_find(directory, "t10k-labels-idx1-ubyte")))
    sets = [("realistic uploads", build_set, args.count, args.by),
            ("hard uploads", lambda n, seed: build_hard_set(n, seed, mnist), args.hard_count,
             args.hard_by),
            ("handwriting: pen-drawn digits and low-resolution scans",
             lambda n, seed: corpora.digit_set(n, seed + 2000, mnist), args.handwriting_count,
             "case,variant,source,side,binary,enlarge,ink,digit"),
            ("the trainer's pen digits (a seed training never uses)",
             lambda n, seed: _as_uploads(*pen_digits(n, np.random.default_rng([seed, 99]))),
             args.handwriting_count // 4, "digit")]
    correct = total = 0
    for name, build, count, by in sets:
        if not count:
            continue
        start = time.perf_counter()
        uploads = build(count, args.seed)
        render_s = time.perf_counter() - start
        predicted, seconds, result = evaluate_uploads(module, preprocessing, uploads, decision)
        labels = np.array([u.label for u in uploads])
        refused = int(np.sum(predicted == -1))
        correct, total = correct + int(np.sum(predicted == labels)), total + len(labels)
        print(f"{name} ({len(uploads)}, seed {args.seed}): "
              f"{100 * np.mean(predicted == labels):.2f}% correct, {refused} refused by "
              f"to_mnist, {digit_line(predicted, labels, result)}  "
              f"(rendered in {render_s:.1f} s, to_mnist {1000 * seconds / len(uploads):.2f} "
              "ms/image)")
        if decision is not None:
            worst = _most_refused(uploads, predicted, result, by.split(","))
            print(f"  most refused as not a digit: {worst}")
        table = breakdown(uploads, predicted)
        tags = [t for t in by.split(",") if t in table]
        for tag in tags:
            cells = "  ".join(f"{v} {100 * c / n:.1f}% ({n})" for v, (c, n) in table[tag].items())
            print(f"  by {tag}: {cells}")
        if tags:
            print(f"  lowest (n, 95% interval): {lowest(table, tags)}")
    if total:
        print(f"whole set ({total}): {100 * correct / total:.2f}% correct")
    if args.not_digit_count:
        for name, uploads in (
                ("not digits (bench/corpora.py)",
                 corpora.not_digit_set(args.not_digit_count, args.seed + 1000)),
                ("the trainer's not-digits (a seed training never uses)",
                 _not_digit_uploads(args.not_digit_count, args.seed))):
            predicted, _, result = evaluate_uploads(module, preprocessing, uploads, decision)
            answered = result.is_digit & (predicted >= 0)
            print(f"{name} ({len(uploads)}): refused {100 * np.mean(~answered):.1f}% (not a "
                  "digit, or no digit found by to_mnist; lookalikes are required neither way)")
            styles = np.array([u.tags.get("styles", "") for u in uploads])
            for group in sorted(set(styles), reverse=True):  # held-out, then dev
                pick = np.flatnonzero(styles == group)
                table = refusal_table([uploads[i] for i in pick], predicted[pick],
                                      _rows(result, pick), "kind")
                print(f"  by kind{f', {group} styles' if group else ''}: {table}")
    if args.number_count:
        r = evaluate_numbers(module, preprocessing,
                             build_number_set(args.number_count, args.seed, mnist))
        cells = "  ".join(f"{k} {100 * c / n:.1f}% ({n})" for k, (c, n) in r["by"].items())
        print(f"written numbers of 2-6 digits ({r['n']}): {100 * r['right'] / r['n']:.2f}% read "
              f"whole, {100 * r['count_right'] / r['n']:.2f}% with the right number of digits "
              f"({r['ms']:.2f} ms/number)\n  by {cells}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
