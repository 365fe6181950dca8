"""Upload corpora for refusals and handwriting, drawn with PIL (bench and tests share them).

Made in a different style from the trainer's own generated images (trainer.synthetic, numpy
arcs and polylines) so that they measure more than the generator: digits and doodles here are
smooth curves through a few control points (Catmull-Rom), with a random-walk tremor, drawn on
large canvases with PIL's pens and then photographed or scanned (paper grey, polarity, JPEG,
low resolution). Letters come from the installed fonts as well as from pen strokes.

Not digits, by ``kind``: ``font-letters`` and ``font-symbols`` (the Debian fonts' letters and
symbols that no reader takes for a digit), ``lookalikes`` (O o l I S Z B g q b: reported apart,
required neither way), ``doodles``, ``photos`` (1/f-noise scenes: smooth light, objects, edges,
textures), ``clothing`` (Fashion-MNIST test images when the files are there), ``noise``.

Digits, by ``case``: ``pen`` (tremor, pen widths from a fine liner to a marker, the cursive
shapes: open 4s, crossed 7s, 1s with a flag and a foot, 9s with a straight tail...) and
``scan`` (MNIST test digits and pen digits binarised and scanned at 8-16 pixels, enlarged
blocky or smooth, or uploaded that small).
"""

from __future__ import annotations

import io
import string
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT_DIRS = [Path("/usr/share/fonts/truetype") / name for name in
             ("dejavu", "liberation", "freefont")]
LOOKALIKES = "OolISZBgqb"
#: Letters and symbols that are plainly not digits (the lookalikes and the thin strokes that
#: a pipeline may read as a 1, such as l | / ! i j, are not in here).
LETTERS = "".join(c for c in string.ascii_letters if c not in LOOKALIKES + "ijsz")
SYMBOLS = "+=#@%&*<>?^~$€£¥§¶©®πΣΔΩλµ√∞≠±÷×"


@dataclass
class Upload:
    """One rendered upload: encoded bytes, the true digit (-1: not a digit), and what varied
    (tags, for the breakdowns)."""

    data: bytes
    label: int
    tags: dict


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **params)
    return out.getvalue()


def fonts() -> list[Path]:
    return sorted(p for d in FONT_DIRS if d.is_dir() for p in d.glob("*.ttf")
                  if "Math" not in p.name)


def photograph(mask: np.ndarray, rng: np.random.Generator) -> bytes:
    """A coverage mask (1 = ink, any size) as a photographed or scanned page: paper grey,
    polarity, a lighting slope, noise, PNG or JPEG."""
    h, w = mask.shape
    dark = rng.random() < 0.75
    paper, ink = (rng.uniform(170, 255), rng.uniform(0, 80)) if dark else (
        rng.uniform(0, 70), rng.uniform(180, 255))
    yy, xx = np.mgrid[0:h, 0:w]
    slope = rng.uniform(-30, 30, 2) / max(h, w)
    background = paper + slope[0] * (yy - h / 2) + slope[1] * (xx - w / 2)
    gray = background + (ink - background) * mask + rng.normal(0, rng.uniform(0, 6), (h, w))
    image = Image.fromarray(np.clip(gray, 0, 255).astype(np.uint8), "L")
    if rng.random() < 0.4:
        return _encode(image, "JPEG", quality=int(rng.integers(60, 95)))
    return _encode(image, "PNG")


# --- pen strokes: smooth curves through control points ---------------------------------------

def _catmull_rom(points: np.ndarray, per: int = 12) -> np.ndarray:
    """A smooth curve through ``points`` (k, 2)."""
    if len(points) < 3:
        return points
    p = np.concatenate([points[:1], points, points[-1:]])
    t = np.linspace(0, 1, per, endpoint=False)[:, None]
    out = []
    for i in range(1, len(p) - 2):
        p0, p1, p2, p3 = p[i - 1], p[i], p[i + 1], p[i + 2]
        out.append(0.5 * (2 * p1 + (-p0 + p2) * t + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t ** 2
                          + (-p0 + 3 * p1 - 3 * p2 + p3) * t ** 3))
    return np.concatenate(out + [points[-1:]])


def _ring(cx, cy, rx, ry, start=-90, turn=360, k=10):
    a = np.deg2rad(start + np.linspace(0, turn, k))
    return [(cx + rx * np.cos(v), cy + ry * np.sin(v)) for v in a]


#: Digit -> variants, each a list of strokes given by control points (x, y in a 0-1 box).
PEN_DIGITS = {
    0: [[_ring(0.5, 0.5, 0.32, 0.47, -80, 370, 12)]],
    1: [[[(0.5, 0.02), (0.5, 0.98)]],
        [[(0.28, 0.25), (0.52, 0.02), (0.52, 0.98)]],  # flag
        [[(0.28, 0.25), (0.52, 0.02), (0.52, 0.98)], [(0.3, 0.98), (0.74, 0.98)]]],  # and foot
    2: [[[(0.2, 0.22), (0.45, 0.03), (0.75, 0.18), (0.7, 0.45), (0.2, 0.97), (0.82, 0.95)]],
        [[(0.2, 0.25), (0.5, 0.02), (0.78, 0.25), (0.3, 0.85), (0.22, 0.97), (0.35, 0.86),
          (0.82, 0.95)]]],  # a loop at the foot
    3: [[[(0.2, 0.12), (0.55, 0.02), (0.75, 0.22), (0.45, 0.47), (0.78, 0.7), (0.55, 0.97),
          (0.18, 0.88)]],
        [[(0.2, 0.03), (0.78, 0.03), (0.45, 0.4), (0.8, 0.65), (0.5, 0.97), (0.2, 0.88)]]],
    4: [[[(0.62, 0.98), (0.62, 0.02), (0.15, 0.68), (0.85, 0.68)]],
        [[(0.25, 0.02), (0.18, 0.6), (0.85, 0.6)], [(0.65, 0.25), (0.65, 0.98)]]],  # open
    5: [[[(0.75, 0.03), (0.3, 0.03), (0.25, 0.45), (0.6, 0.4), (0.78, 0.7), (0.55, 0.97),
          (0.2, 0.88)]],
        [[(0.3, 0.03), (0.25, 0.45), (0.6, 0.4), (0.78, 0.7), (0.55, 0.97), (0.2, 0.88)],
         [(0.3, 0.03), (0.78, 0.05)]]],
    6: [[[(0.72, 0.04), (0.4, 0.25), (0.22, 0.65), (0.45, 0.97), (0.75, 0.75), (0.5, 0.52),
          (0.24, 0.68)]],
        [[(0.6, 0.02), (0.3, 0.5), (0.28, 0.8), (0.5, 0.97), (0.72, 0.78), (0.5, 0.58),
          (0.3, 0.72)]]],  # straight stem
    7: [[[(0.18, 0.04), (0.8, 0.04), (0.4, 0.98)]],
        [[(0.18, 0.04), (0.8, 0.04), (0.4, 0.98)], [(0.35, 0.5), (0.75, 0.5)]],  # crossed
        [[(0.15, 0.2), (0.2, 0.04), (0.8, 0.04), (0.55, 0.5), (0.45, 0.98)]]],  # with a hook
    8: [[[(0.7, 0.18), (0.5, 0.02), (0.28, 0.18), (0.5, 0.45), (0.76, 0.72), (0.5, 0.97),
          (0.24, 0.72), (0.5, 0.45), (0.7, 0.18)]],
        [_ring(0.5, 0.25, 0.2, 0.22, 90, 360, 9), _ring(0.5, 0.72, 0.26, 0.25, -90, 360, 10)]],
    9: [[_ring(0.48, 0.3, 0.26, 0.27, 0, 360, 10), [(0.74, 0.3), (0.7, 0.98)]],  # straight tail
        [_ring(0.48, 0.3, 0.26, 0.27, 0, 360, 10),
         [(0.74, 0.3), (0.72, 0.75), (0.55, 0.97), (0.35, 0.9)]]],
}


def _doodle(rng: np.random.Generator) -> tuple[list, str]:
    """Strokes of one doodle (control points in a 0-1 box) and its name."""
    name = str(rng.choice(["star", "heart", "spiral", "house", "arrow", "smiley", "zigzag",
                           "scribble", "moon", "cloud", "bolt", "cross-hatch", "flower",
                           "sun", "car", "note", "cat", "boat"]))
    if name == "star":
        a = np.deg2rad(np.arange(11) * 144 - 90)
        strokes = [[(0.5 + 0.48 * np.cos(v), 0.5 + 0.48 * np.sin(v)) for v in a]]
    elif name == "heart":
        strokes = [[(0.5, 0.3), (0.3, 0.08), (0.08, 0.25), (0.2, 0.6), (0.5, 0.95), (0.8, 0.6),
                    (0.92, 0.25), (0.7, 0.08), (0.5, 0.3)]]
    elif name == "spiral":
        t = np.linspace(0, rng.uniform(3, 7) * np.pi, 30)
        strokes = [[(0.5 + 0.48 * s / t[-1] * np.cos(s), 0.5 + 0.48 * s / t[-1] * np.sin(s))
                    for s in t]]
    elif name == "house":
        strokes = [[(0.1, 0.45), (0.1, 0.95), (0.9, 0.95), (0.9, 0.45)],
                   [(0.02, 0.5), (0.5, 0.05), (0.98, 0.5)], [(0.4, 0.95), (0.4, 0.7), (0.6, 0.7),
                                                           (0.6, 0.95)]]
    elif name == "arrow":
        strokes = [[(0.02, 0.5), (0.98, 0.5)], [(0.7, 0.25), (0.98, 0.5), (0.7, 0.75)]]
        if rng.random() < 0.5:
            strokes = [[(y, x) for x, y in s] for s in strokes]
    elif name == "smiley":
        strokes = [_ring(0.5, 0.5, 0.47, 0.47, 0, 360, 12),
                   _ring(0.5, 0.55, 0.25, 0.18, 20, 140, 5),
                   _ring(0.35, 0.35, 0.05, 0.06, 0, 360, 6),
                   _ring(0.65, 0.35, 0.05, 0.06, 0, 360, 6)]
    elif name == "zigzag":
        k = int(rng.integers(4, 9))
        strokes = [[(i / k, 0.3 + 0.4 * (i % 2)) for i in range(k + 1)]]
    elif name == "scribble":
        strokes = [[tuple(p) for p in rng.uniform(0.05, 0.95, (int(rng.integers(8, 16)), 2))]]
    elif name == "moon":
        strokes = [_ring(0.5, 0.5, 0.45, 0.47, 60, 240, 9)
                   + _ring(0.62, 0.5, 0.3, 0.4, 200, -140, 7)]
    elif name == "cloud":
        strokes = [[(0.1, 0.7), (0.05, 0.5), (0.2, 0.35), (0.35, 0.2), (0.55, 0.25), (0.7, 0.15),
                    (0.88, 0.35), (0.95, 0.6), (0.8, 0.75), (0.1, 0.7)]]
    elif name == "bolt":
        strokes = [[(0.6, 0.02), (0.25, 0.55), (0.55, 0.5), (0.3, 0.98), (0.8, 0.4), (0.5, 0.45),
                    (0.75, 0.02)]]
    elif name == "cross-hatch":
        k = int(rng.integers(3, 6))
        strokes = [[(i / k, 0.0), (i / k + 0.2, 1.0)] for i in range(k)] + [
            [(0.0, i / k), (1.0, i / k + 0.1)] for i in range(k)]
    elif name == "flower":
        strokes = [_ring(0.5 + 0.22 * np.cos(a), 0.35 + 0.22 * np.sin(a), 0.13, 0.13, 0, 360, 7)
                   for a in np.deg2rad(np.arange(0, 360, 72))] + [[(0.5, 0.55), (0.5, 0.98)]]
    elif name == "sun":
        strokes = [_ring(0.5, 0.5, 0.2, 0.2, 0, 360, 9)] + [
            [(0.5 + 0.28 * np.cos(a), 0.5 + 0.28 * np.sin(a)),
             (0.5 + 0.48 * np.cos(a), 0.5 + 0.48 * np.sin(a))]
            for a in np.deg2rad(np.arange(0, 360, 45))]
    elif name == "car":
        strokes = [[(0.05, 0.7), (0.05, 0.45), (0.25, 0.45), (0.35, 0.25), (0.7, 0.25),
                    (0.8, 0.45), (0.95, 0.5), (0.95, 0.7), (0.05, 0.7)],
                   _ring(0.25, 0.75, 0.1, 0.1, 0, 360, 7), _ring(0.75, 0.75, 0.1, 0.1, 0, 360, 7)]
    elif name == "note":
        strokes = [_ring(0.3, 0.85, 0.15, 0.1, 0, 360, 7), [(0.45, 0.85), (0.45, 0.05), (0.8, 0.2)]]
    elif name == "cat":
        strokes = [[(0.15, 0.35), (0.2, 0.05), (0.4, 0.25), (0.6, 0.25), (0.8, 0.05), (0.85, 0.35),
                    (0.85, 0.7), (0.5, 0.95), (0.15, 0.7), (0.15, 0.35)],
                   [(0.35, 0.5), (0.4, 0.5)], [(0.6, 0.5), (0.65, 0.5)], [(0.45, 0.7), (0.55, 0.7)]]
    else:  # boat
        strokes = [[(0.05, 0.65), (0.95, 0.65), (0.8, 0.9), (0.2, 0.9), (0.05, 0.65)],
                   [(0.5, 0.65), (0.5, 0.05), (0.85, 0.55), (0.5, 0.55)]]
    return strokes, name


def pen_drawing(strokes: list, rng: np.random.Generator, tremor: float,
                width_fraction: float, side: int | None = None) -> np.ndarray:
    """Control-point strokes drawn with PIL as a pen would: smoothed, with a random-walk
    tremor of ``tremor`` (a fraction of the size), a pen ``width_fraction`` of the size;
    a coverage mask (float, 1 = ink) on a canvas of ``side`` pixels."""
    side = side or int(rng.integers(96, 400))
    margin = side * rng.uniform(0.08, 0.3)
    aspect = rng.uniform(0.8, 1.1)
    slant = rng.uniform(-0.25, 0.25)
    angle = np.deg2rad(rng.uniform(-12, 12))
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    image = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(image)
    width = max(1, round(width_fraction * side))
    for stroke in strokes:
        points = np.asarray(stroke, dtype=float) + rng.normal(0, 0.015, (len(stroke), 2))
        curve = _catmull_rom(points) - 0.5
        curve = curve @ np.array([[aspect, 0], [slant, 1]]) @ rot.T + 0.5
        walk = np.cumsum(rng.normal(0, tremor, curve.shape), axis=0)
        curve = curve + walk - walk.mean(axis=0)
        xy = [tuple(p) for p in margin + curve * (side - 2 * margin)]
        draw.line(xy, fill=255, width=width, joint="curve")
        for end in (xy[0], xy[-1]):  # round ends
            r = width / 2
            draw.ellipse([end[0] - r, end[1] - r, end[0] + r, end[1] + r], fill=255)
    return np.asarray(image, dtype=np.float32) / 255


def pen_digit(digit: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
    """A pen-drawn digit's coverage mask and its variant name."""
    variants = PEN_DIGITS[digit]
    k = int(rng.integers(len(variants)))
    mask = pen_drawing(variants[k], rng, tremor=rng.uniform(0, 0.006),
                       width_fraction=rng.uniform(0.01, 0.08))
    return mask, f"{digit}.{k}"


def _font_glyph(char: str, font: Path, rng: np.random.Generator) -> np.ndarray | None:
    """``char`` in ``font`` as a coverage mask on a page, or None when the font lacks it."""
    face = ImageFont.truetype(str(font), int(rng.integers(40, 200)))
    box = face.getbbox(char)
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return None
    pad = int(rng.integers(8, 60))
    image = Image.new("L", (box[2] - box[0] + 2 * pad, box[3] - box[1] + 2 * pad), 0)
    ImageDraw.Draw(image).text((pad - box[0], pad - box[1]), char, fill=255, font=face)
    mask = np.asarray(image, dtype=np.float32) / 255
    return mask if mask.max() > 0.5 else None


def _noise_field(h: int, w: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Zero-mean, unit-variance 1/f^exponent noise (natural images' spectrum), (h, w)."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None, :]
    amplitude = 1 / np.maximum(np.hypot(fy, fx), 1 / max(h, w)) ** exponent
    field = np.real(np.fft.ifft2(amplitude * np.exp(2j * np.pi * rng.random((h, w)))))
    return (field - field.mean()) / (field.std() + 1e-9)


def _scene_noise(rng: np.random.Generator) -> Image.Image:
    """1/f noise in colour, with a few shaded discs and boxes."""
    h, w = int(rng.integers(64, 320)), int(rng.integers(64, 320))
    channels = [_noise_field(h, w, rng, rng.uniform(0.8, 1.4)) for _ in range(3)]
    base = np.stack(channels, -1) * 0.4 + np.array(channels[0][..., None]) * 0.6
    image = 128 + 40 * base * rng.uniform(0.5, 1.5)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    for _ in range(int(rng.integers(0, 4))):
        c, r = rng.uniform(0.1, 0.9, 2), rng.uniform(0.08, 0.4)
        inside = ((yy - c[0]) ** 2 + (xx - c[1]) ** 2) < r * r
        if rng.random() < 0.4:
            inside = (np.abs(yy - c[0]) < r) & (np.abs(xx - c[1]) < r * rng.uniform(0.5, 2))
        shade = rng.uniform(-90, 90, 3) * (1 + 0.5 * (xx - c[1])[..., None])
        image = np.where(inside[..., None], image + shade, image)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


def _colour(rng: np.random.Generator, low: int = 0, high: int = 255) -> tuple[int, ...]:
    return tuple(int(v) for v in rng.integers(low, high, 3))


def _background(size: int, rng: np.random.Generator) -> Image.Image:
    """A wall, a table or the sky behind a subject: a colour, light and shade, 1/f texture."""
    base = np.array(_colour(rng, 40, 230), dtype=float)
    texture = _noise_field(size, size, rng, rng.uniform(1.0, 2.0))[..., None]
    light = np.linspace(-1, 1, size)[:, None, None] * rng.uniform(-40, 40)
    return Image.fromarray(np.clip(base + light + texture * rng.uniform(5, 30), 0, 255)
                           .astype(np.uint8), "RGB")


def _face(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    skin = (int(rng.integers(90, 240)), int(rng.integers(60, 200)), int(rng.integers(40, 170)))
    cx, cy = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.45, 0.6)
    rx, ry = size * rng.uniform(0.22, 0.32), size * rng.uniform(0.3, 0.4)
    draw.ellipse([cx - rx * 1.1, cy - ry * 1.15, cx + rx * 1.1, cy + ry * 0.3],
                 fill=_colour(rng, 0, 120))  # hair
    draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=skin)
    for side in (-1, 1):
        ex, ey, er = cx + side * rx * 0.4, cy - ry * 0.15, rx * 0.12
        draw.ellipse([ex - er * 1.6, ey - er, ex + er * 1.6, ey + er], fill=(240, 240, 240))
        draw.ellipse([ex - er * 0.7, ey - er * 0.7, ex + er * 0.7, ey + er * 0.7],
                     fill=_colour(rng, 0, 90))
    draw.line([(cx, cy - ry * 0.05), (cx - rx * 0.1, cy + ry * 0.25), (cx, cy + ry * 0.3)],
              fill=tuple(int(v * 0.8) for v in skin), width=max(1, size // 60))
    draw.arc([cx - rx * 0.45, cy + ry * 0.2, cx + rx * 0.45, cy + ry * 0.65], 20, 160,
             fill=(150, 40, 50), width=max(1, size // 40))


def _person(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 4))):
        cx, scale = size * rng.uniform(0.15, 0.85), size * rng.uniform(0.25, 0.5)
        top = size * rng.uniform(0.1, 0.5)
        clothes = _colour(rng)
        draw.rounded_rectangle([cx - scale * 0.35, top + scale * 0.4, cx + scale * 0.35,
                                top + scale * 1.6], radius=int(scale * 0.15), fill=clothes)
        draw.ellipse([cx - scale * 0.18, top, cx + scale * 0.18, top + scale * 0.42],
                     fill=(int(rng.integers(90, 240)), int(rng.integers(60, 190)), 90))


def _cat(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    fur = _colour(rng, 30, 220)
    cx, cy, r = size * 0.5, size * rng.uniform(0.45, 0.6), size * rng.uniform(0.25, 0.35)
    draw.ellipse([cx - r * 1.4, cy + r * 0.4, cx + r * 1.4, cy + r * 2.2], fill=fur)  # body
    for side in (-1, 1):
        draw.polygon([(cx + side * r * 0.95, cy - r * 0.2), (cx + side * r * 0.75, cy - r * 1.3),
                      (cx + side * r * 0.25, cy - r * 0.75)], fill=fur)
    draw.ellipse([cx - r, cy - r * 0.85, cx + r, cy + r * 0.85], fill=fur)
    for side in (-1, 1):
        ex, ey = cx + side * r * 0.4, cy - r * 0.1
        draw.ellipse([ex - r * 0.16, ey - r * 0.12, ex + r * 0.16, ey + r * 0.12],
                     fill=(int(rng.integers(120, 220)), 200, 60))
        draw.ellipse([ex - r * 0.04, ey - r * 0.11, ex + r * 0.04, ey + r * 0.11], fill=(0, 0, 0))
        for k in (-1, 0, 1):  # whiskers
            draw.line([(cx + side * r * 0.2, cy + r * 0.3), (cx + side * r * 1.2,
                        cy + r * (0.25 + 0.15 * k))], fill=(230, 230, 230), width=1)
    draw.polygon([(cx - r * 0.1, cy + r * 0.15), (cx + r * 0.1, cy + r * 0.15),
                  (cx, cy + r * 0.28)], fill=(200, 120, 130))


def _coffee(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    cx, cy, r = size * rng.uniform(0.4, 0.6), size * rng.uniform(0.4, 0.6), size * rng.uniform(
        0.25, 0.38)
    draw.ellipse([cx - r * 1.4, cy - r * 1.3, cx + r * 1.4, cy + r * 1.3],
                 fill=_colour(rng, 180, 255))  # saucer
    cup = _colour(rng, 150, 255)
    draw.rounded_rectangle([cx + r * 0.8, cy - r * 0.2, cx + r * 1.35, cy + r * 0.2],
                           radius=int(r * 0.15), fill=cup)  # handle
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=cup)
    inner = r * rng.uniform(0.75, 0.88)
    draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner],
                 fill=(int(rng.integers(60, 150)), int(rng.integers(30, 90)), 20))
    if rng.random() < 0.6:  # foam and a heart of milk
        foam = inner * 0.5
        draw.ellipse([cx - foam, cy - foam, cx + foam, cy + foam], fill=(220, 190, 150))


def _coins(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 9))):
        cx, cy = size * rng.uniform(0.1, 0.9, 2)
        r = size * rng.uniform(0.06, 0.2)
        metal = (int(rng.integers(140, 230)), int(rng.integers(110, 200)),
                 int(rng.integers(40, 170)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=metal,
                     outline=tuple(int(v * 0.6) for v in metal), width=max(1, int(r * 0.12)))
        inner = r * 0.55  # an embossed head or emblem
        draw.ellipse([cx - inner * 0.7, cy - inner, cx + inner * 0.7, cy + inner],
                     outline=tuple(int(v * 0.75) for v in metal), width=max(1, int(r * 0.06)))


def _moon(draw: ImageDraw.ImageDraw, size: int, rng: np.random.Generator) -> None:
    cx, cy = size * rng.uniform(0.35, 0.65, 2)
    r = size * rng.uniform(0.2, 0.45)
    grey = int(rng.integers(170, 250))
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(grey, grey, grey - 10))
    for _ in range(int(rng.integers(4, 14))):  # maria and craters
        a, d = rng.uniform(0, 2 * np.pi), r * np.sqrt(rng.uniform(0, 0.7))
        cr = r * rng.uniform(0.05, 0.3)
        x, y = cx + d * np.cos(a), cy + d * np.sin(a)
        shade = grey - int(rng.integers(30, 90))
        draw.ellipse([x - cr, y - cr, x + cr, y + cr], fill=(shade, shade, shade))
    if rng.random() < 0.5:  # a phase: the dark part in shadow
        off = r * rng.uniform(0.3, 1.5) * rng.choice([-1, 1])
        draw.ellipse([cx - r + off, cy - r * 1.05, cx + r + off, cy + r * 1.05], fill=(8, 8, 12))


def _texture_photo(size: int, rng: np.random.Generator) -> Image.Image:
    """Wood grain, bricks, woven fabric, gravel or grass, filling the picture."""
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = int(rng.integers(5))
    noise = _noise_field(size, size, rng, 1.2)
    if kind == 0:  # wood: rings bent by noise
        value = np.sin((xx * rng.uniform(10, 40) + noise * rng.uniform(0.5, 2)) * np.pi)
    elif kind == 1:  # bricks: rows of offset boxes and mortar
        rows = rng.uniform(5, 12)
        row = np.floor(yy * rows)
        shift = (row % 2) * 0.5
        value = ((((xx * rows / 2 + shift) % 1) > 0.06) & ((yy * rows % 1) > 0.1)) * 2.0 - 1
        value = value + 0.3 * noise
    elif kind == 2:  # fabric: a weave
        f = rng.uniform(15, 50)
        value = np.sin(xx * f * np.pi) * np.sin(yy * f * np.pi) + 0.3 * noise
    elif kind == 3:  # gravel: many small blobs
        value = np.sign(_noise_field(size, size, rng, 0.6)) * 0.7 + 0.3 * noise
    else:  # grass: vertical streaks
        value = _noise_field(size, size, rng, 1.0) * 0.3 + np.sin(
            xx * rng.uniform(40, 90) * np.pi + noise * 3) * 0.7
    base = np.array(_colour(rng, 60, 200), dtype=float)
    image = base + value[..., None] * rng.uniform(20, 60)
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8), "RGB")


PHOTO_SCENES = {"faces": _face, "people": _person, "cat": _cat, "coffee": _coffee,
                "coins": _coins, "moon": _moon}


def _photo(rng: np.random.Generator) -> tuple[Image.Image, str]:
    """A photo-like RGB picture and its scene: a subject drawn on a background (faces,
    people, a cat, coffee seen from above, coins on a table, the moon in the night sky), a
    texture filling the frame, or 1/f-noise scenes; cropped, blurred a little, noisy."""
    scene = str(rng.choice(list(PHOTO_SCENES) + ["texture", "noise-scene"]))
    if scene == "noise-scene":
        return _scene_noise(rng), scene
    size = int(rng.integers(96, 400))
    if scene == "texture":
        image = _texture_photo(size, rng)
    else:
        image = (Image.new("RGB", (size, size), (5, 5, 15)) if scene == "moon"
                 else _background(size, rng))
        PHOTO_SCENES[scene](ImageDraw.Draw(image), size, rng)
    # a crop of the picture, as a user's photo frames its subject loosely or tightly
    w, h = (int(size * rng.uniform(0.6, 1.0)) for _ in range(2))
    x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
    image = image.crop((x, y, x + w, y + h)).filter(ImageFilter.GaussianBlur(
        rng.uniform(0, 0.01) * size))
    pixels = np.asarray(image, dtype=float) + rng.normal(0, rng.uniform(1, 8), (h, w, 3))
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB"), scene


def read_fashion(directory: Path = Path("/usr/share/datasets/fashion-mnist")
                 ) -> tuple[np.ndarray, np.ndarray] | None:
    """Fashion-MNIST's test images (uint8, N x 28 x 28) and classes (N,), or None when not
    installed. (The trainer's negatives come from its training images: these it never sees.)"""
    import gzip

    def read(stem: str, offset: int) -> np.ndarray | None:
        for path in (directory / f"{stem}.gz", directory / stem):
            if path.is_file():
                raw = path.read_bytes()
                raw = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
                return np.frombuffer(raw, np.uint8, offset=offset)
        return None

    images, labels = read("t10k-images-idx3-ubyte", 16), read("t10k-labels-idx1-ubyte", 8)
    if images is None or labels is None:
        return None
    return images.reshape(-1, 28, 28), labels


NOT_DIGIT_KINDS = ("font-letters", "font-symbols", "pen-letters", "doodles", "photos",
                   "clothing", "noise", "lookalikes")
#: Styles of each kind kept out of tuning: every upload is tagged ``styles: dev`` or
#: ``styles: held-out`` (font letters and symbols by font family, pen letters by letter,
#: doodles by subject, photos by scene, clothing by Fashion-MNIST class, noise by kind), and
#: the benchmark reports both. Changes to the trainer are judged on the dev styles of a seed
#: other than the benchmark's; the held-out styles and the benchmark's seeds are the measure.
HELD_OUT_STYLES = {"font": "Free", "pen-letters": set("EKNWex#=&"),
                   "doodles": {"heart", "smiley", "moon", "car", "cat", "bolt"},
                   "photos": {"cat", "coffee", "texture"}, "clothing": {5, 6, 7, 8, 9},
                   "noise": {"normal"}}


def not_digit_set(count: int, seed: int = 1000, kinds=NOT_DIGIT_KINDS) -> list[Upload]:
    """``count`` uploads that are not digits, cycling through ``kinds`` (clothing is skipped
    when Fashion-MNIST is not installed); the same seed gives the same bytes."""
    rng = np.random.default_rng(seed)
    available = fonts()
    fashion = read_fashion() if "clothing" in kinds else None
    kinds = [k for k in kinds if k != "clothing" or fashion is not None]
    uploads = []
    pen_letters = _pen_letter_table()
    i = 0
    while len(uploads) < count:
        kind = kinds[i % len(kinds)]
        i += 1
        tags = {"kind": kind}
        if kind in ("font-letters", "font-symbols", "lookalikes"):
            chars = {"font-letters": LETTERS, "font-symbols": SYMBOLS,
                     "lookalikes": LOOKALIKES}[kind]
            char = chars[int(rng.integers(len(chars)))]
            font = available[int(rng.integers(len(available)))]
            mask = _font_glyph(char, font, rng)
            if mask is None:
                continue
            tags["char"] = char
            held_out = font.name.startswith(HELD_OUT_STYLES["font"])
            data = photograph(mask, rng)
        elif kind == "pen-letters":
            char, strokes = pen_letters[int(rng.integers(len(pen_letters)))]
            tags["char"] = char
            held_out = char in HELD_OUT_STYLES[kind]
            data = photograph(pen_drawing(strokes, rng, rng.uniform(0, 0.006),
                                          rng.uniform(0.01, 0.07)), rng)
        elif kind == "doodles":
            strokes, tags["doodle"] = _doodle(rng)
            held_out = tags["doodle"] in HELD_OUT_STYLES[kind]
            data = photograph(pen_drawing(strokes, rng, rng.uniform(0, 0.006),
                                          rng.uniform(0.01, 0.07)), rng)
        elif kind == "photos":
            image, tags["scene"] = _photo(rng)
            held_out = tags["scene"] in HELD_OUT_STYLES[kind]
            data = _encode(image, "JPEG", quality=int(rng.integers(60, 95)))
        elif kind == "clothing":
            k = int(rng.integers(len(fashion[0])))
            item, held_out = fashion[0][k], int(fashion[1][k]) in HELD_OUT_STYLES[kind]
            scale = int(rng.choice([1, 1, 4, 8]))
            image = Image.fromarray(255 - item if rng.random() < 0.5 else item, "L")
            data = _encode(image.resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC),
                           "PNG")
        else:  # noise
            h, w = int(rng.integers(28, 200)), int(rng.integers(28, 200))
            normal = rng.random() >= 0.5
            noise = rng.normal(128, rng.uniform(20, 80), (h, w)) if normal else rng.random(
                (h, w)) * 255
            held_out = ("normal" if normal else "uniform") in HELD_OUT_STYLES[kind]
            data = _encode(Image.fromarray(np.clip(noise, 0, 255).astype(np.uint8), "L"), "PNG")
        tags["styles"] = "held-out" if held_out else "dev"
        uploads.append(Upload(data, -1, tags))
    return uploads


def _pen_letter_table() -> list[tuple[str, list]]:
    """Pen letters and symbols as control points: a handful drawn independently of the
    trainer's stroke table."""
    return [
        ("A", [[(0.1, 0.98), (0.5, 0.02), (0.9, 0.98)], [(0.28, 0.6), (0.72, 0.6)]]),
        ("E", [[(0.8, 0.05), (0.2, 0.05), (0.2, 0.95), (0.8, 0.95)], [(0.2, 0.5), (0.65, 0.5)]]),
        ("F", [[(0.8, 0.05), (0.2, 0.05), (0.2, 0.98)], [(0.2, 0.5), (0.65, 0.5)]]),
        ("H", [[(0.2, 0.02), (0.2, 0.98)], [(0.8, 0.02), (0.8, 0.98)], [(0.2, 0.5), (0.8, 0.5)]]),
        ("K", [[(0.2, 0.02), (0.2, 0.98)], [(0.8, 0.02), (0.22, 0.55), (0.8, 0.98)]]),
        ("M", [[(0.1, 0.98), (0.15, 0.02), (0.5, 0.6), (0.85, 0.02), (0.9, 0.98)]]),
        ("N", [[(0.2, 0.98), (0.2, 0.02), (0.8, 0.98), (0.8, 0.02)]]),
        ("R", [[(0.2, 0.98), (0.2, 0.02), (0.6, 0.05), (0.75, 0.25), (0.6, 0.47), (0.2, 0.5)],
               [(0.4, 0.5), (0.8, 0.98)]]),
        ("W", [[(0.05, 0.02), (0.25, 0.98), (0.5, 0.35), (0.75, 0.98), (0.95, 0.02)]]),
        ("X", [[(0.1, 0.02), (0.9, 0.98)], [(0.9, 0.02), (0.1, 0.98)]]),
        ("Y", [[(0.1, 0.02), (0.5, 0.5), (0.9, 0.02)], [(0.5, 0.5), (0.5, 0.98)]]),
        ("e", [[(0.2, 0.55), (0.8, 0.5), (0.6, 0.25), (0.3, 0.3), (0.2, 0.6), (0.4, 0.9),
                (0.8, 0.85)]]),
        ("h", [[(0.2, 0.02), (0.2, 0.98)], [(0.2, 0.6), (0.5, 0.4), (0.75, 0.6), (0.75, 0.98)]]),
        ("k", [[(0.25, 0.02), (0.25, 0.98)], [(0.75, 0.4), (0.27, 0.7), (0.75, 0.98)]]),
        ("m", [[(0.1, 0.98), (0.1, 0.4), (0.3, 0.35), (0.5, 0.5), (0.5, 0.98)],
               [(0.5, 0.5), (0.7, 0.35), (0.9, 0.5), (0.9, 0.98)]]),
        ("r", [[(0.3, 0.98), (0.3, 0.3)], [(0.3, 0.5), (0.5, 0.3), (0.75, 0.35)]]),
        ("w", [[(0.05, 0.3), (0.25, 0.95), (0.5, 0.5), (0.75, 0.95), (0.95, 0.3)]]),
        ("x", [[(0.15, 0.3), (0.85, 0.95)], [(0.85, 0.3), (0.15, 0.95)]]),
        ("#", [[(0.35, 0.02), (0.3, 0.98)], [(0.7, 0.02), (0.65, 0.98)],
               [(0.05, 0.35), (0.95, 0.35)], [(0.05, 0.68), (0.95, 0.68)]]),
        ("+", [[(0.5, 0.05), (0.5, 0.95)], [(0.05, 0.5), (0.95, 0.5)]]),
        ("=", [[(0.05, 0.35), (0.95, 0.35)], [(0.05, 0.65), (0.95, 0.65)]]),
        ("*", [[(0.5, 0.05), (0.5, 0.95)], [(0.1, 0.25), (0.9, 0.75)], [(0.1, 0.75), (0.9, 0.25)]]),
        ("&", [[(0.85, 0.95), (0.3, 0.35), (0.35, 0.08), (0.6, 0.1), (0.55, 0.35), (0.15, 0.7),
                (0.3, 0.95), (0.6, 0.85), (0.85, 0.55)]]),
        ("@", [_ring(0.5, 0.5, 0.18, 0.2, 0, 360, 8),
               [(0.68, 0.35), (0.7, 0.7), (0.9, 0.6), (0.95, 0.4), (0.75, 0.08), (0.35, 0.05),
                (0.05, 0.4), (0.2, 0.85), (0.6, 0.95)]]),
    ]


DIGIT_CASES = ("pen", "scan")


def digit_set(count: int, seed: int = 2000, mnist: tuple | None = None) -> list[Upload]:
    """``count`` handwriting-like digit uploads alternating ``pen`` and ``scan`` (scans of
    MNIST test digits when ``mnist`` = (images, labels) is given, else of pen digits)."""
    rng = np.random.default_rng(seed)
    uploads = []
    for i in range(count):
        case = DIGIT_CASES[i % 2]
        digit = (i // 2) % 10
        if case == "pen":
            mask, variant = pen_digit(digit, rng)
            uploads.append(Upload(photograph(mask, rng), digit, {"case": case,
                                                                 "variant": variant}))
            continue
        if mnist is not None and rng.random() < 0.5:
            images, labels = mnist
            k = int(rng.integers(len(labels)))
            digit, mask, source = int(labels[k]), images[k] / 255, "mnist"
        else:
            mask, source = pen_digit(digit, rng)[0], "pen"
        data, conditions = scan(mask, rng)
        uploads.append(Upload(data, digit, {"case": case, "source": source, **conditions}))
    return uploads


def scan(mask: np.ndarray, rng: np.random.Generator) -> tuple[bytes, dict]:
    """A low-resolution scan of a coverage mask: cropped to the ink with a small margin,
    shrunk to 8-16 pixels (box filter), binarised or not, then enlarged blocky or smooth, or
    uploaded that small; and those conditions as tags (``side``, ``binary``, ``enlarge``, and
    ``ink``: fewer than 10 pixels of the small scan at a quarter of full ink or more, or not)."""
    ys, xs = np.nonzero(mask > 0.1)
    crop = mask[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    margin = int(max(crop.shape) * rng.uniform(0, 0.15))
    crop = np.pad(crop, margin)
    side = int(rng.integers(8, 17))
    scale = side / max(crop.shape)
    small = Image.fromarray((crop * 255).astype(np.uint8)).resize(
        (max(1, round(crop.shape[1] * scale)), max(1, round(crop.shape[0] * scale))),
        Image.Resampling.BOX)
    pixels = np.asarray(small, dtype=np.float32) / 255
    binary = rng.random() < 0.5
    if binary:  # a fax or a 1-bit scanner, its threshold set from the page's own contrast
        pixels = (pixels > rng.uniform(0.25, 0.5) * pixels.max()).astype(np.float32)
    paper = 255 - pixels * rng.uniform(180, 255)
    image = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8), "L")
    mode = str(rng.choice(["nearest", "bilinear", "as-is"]))
    if mode != "as-is":
        factor = int(rng.integers(3, 12))
        resample = Image.Resampling.NEAREST if mode == "nearest" else Image.Resampling.BILINEAR
        image = image.resize((image.width * factor, image.height * factor), resample)
    # what is left to read: a thin, pale pen line scanned grey at 8-16 px can be faint
    # (binarised, it stays: before 2026-12-07 a fixed threshold erased it; docs/benchmarks.md)
    inked = int(np.count_nonzero(pixels >= 0.25))
    tags = {"side": "8-10" if side <= 10 else "11-13" if side <= 13 else "14-16",
            "binary": "yes" if binary else "no", "enlarge": mode,
            "ink": "0-9 px" if inked < 10 else "10+ px"}
    return _encode(image, "PNG"), tags
