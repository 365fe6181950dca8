"""Generated training images: digits written with a pen or typeset, and what is not a digit.

``pen_digits`` draws the stroke table's digits (trainer.glyphs) with a hand's wobble and
tremor and pens from a fine liner to a marker, so that a thin, even pen stroke stops
signalling "not a digit"; ``typeset_digits`` draws them as type is (serifs, bowls thick at
the sides and thin at the top, no tremor), the style of the typeset letters among the
not-digits. ``not_digits`` draws letters and symbols, doodles (stars, hearts, spirals,
houses, arrows, faces, zigzags, scribbles...), photo-like textures and noise, framed as the
server frames an upload (long side 20 pixels, mass centred); ``clothes`` frames pictures of
clothes (Fashion-MNIST's training images) the same way. All in numpy, from the caller's
generator (only the typed letters of trainer.typefaces need Pillow, for the fonts).
"""

from __future__ import annotations

import numpy as np

from models import framing
from trainer import typefaces
from trainer.data import Split
from trainer.glyphs import DIGITS, MARKED_ZEROS, SYMBOLS
from trainer.strokes import SIDE, arc, hand, line, path, render

#: Pen widths in pixels of the 28x28 image: the range the server's pipeline leaves strokes in
#: (it thickens hairlines and thins markers to 1.5-2.7 px), a little beyond on each side.
PEN_WIDTHS = (1.2, 3.2)


def _widths(n: int, rng: np.random.Generator) -> np.ndarray:
    return rng.uniform(*PEN_WIDTHS, n).astype(np.float32)


def pen_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) float32, labels (n,) int64): the digits 0-9 in turn, each a random
    variant of its stroke table drawn by a hand with a random pen."""
    labels = np.arange(n, dtype=np.int64) % 10
    shapes = []
    for digit in labels:
        variants = DIGITS[int(digit)]
        shape = variants[int(rng.integers(len(variants)))]
        shapes.append(hand(shape, rng, tremor=rng.uniform(0.0, 0.8)))
    return render(shapes, _widths(n, rng)), labels


def broad_nib(shape: list, thick: float, thin: float, angle: float) -> tuple[list, list]:
    """(pieces, widths): ``shape``'s strokes cut into pieces a few points long, each as wide
    as a broad pen held at ``angle`` (radians) draws it: ``thick`` across the pen's edge,
    ``thin`` along it, as a serif face's round letters swell at the sides and thin at the top
    and bottom. The strokes should be dense (``hand`` makes them so)."""
    pieces, widths = [], []
    for stroke in shape:
        for i in range(0, max(len(stroke) - 1, 1), NIB_PIECE):
            piece = stroke[i:i + NIB_PIECE + 1]
            dx, dy = piece[-1] - piece[0]
            pieces.append(piece)
            widths.append(thin + (thick - thin) * abs(np.sin(np.arctan2(dy, dx) - angle)))
    return pieces, widths


#: Points of a dense stroke (hand's, about 1.4 px apart) per piece of one width.
NIB_PIECE = 3
#: A typeset digit's thickest stroke in pixels, and its thinnest as a share of it: from a
#: light face's even strokes to a bold serif's hairlines.
TYPE_WIDTHS, TYPE_CONTRAST = (1.6, 3.8), (0.1, 0.7)
#: The broad pen's angle in degrees (0: flat, upright strokes thickest).
NIB_ANGLES = (-35, 10)
#: Strokes of the stroke table with more control points than this are curves (arcs, paths
#: through them); the rest are straight bars and stems.
CURVE_POINTS = 4


def _typeset(shape: list, rng: np.random.Generator) -> tuple[list, np.ndarray]:
    """``shape`` as type: serifs on half, a steady hand, thick and thin strokes."""
    if rng.random() < 0.5:
        shape = shape + _serifs(shape, rng)
    curved = [len(stroke) > CURVE_POINTS for stroke in shape]
    shape = hand(shape, rng, tremor=0.0, rotation=8, wobble=0.005)
    thick = rng.uniform(*TYPE_WIDTHS)
    thin = thick * rng.uniform(*TYPE_CONTRAST)
    angle = np.deg2rad(rng.uniform(*NIB_ANGLES))
    pieces, widths = [], []
    for stroke, curve in zip(shape, curved):
        if curve:  # bowls swell and thin as a broad pen draws them
            more, more_widths = broad_nib([stroke], thick, thin, angle)
        else:  # bars, stems and serifs: each one width between the thin and the thick
            more, more_widths = [stroke], [rng.uniform(thin, thick)]
        pieces += more
        widths += more_widths
    return pieces, np.array(widths, dtype=np.float32)


def typeset_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) float32, labels (n,) int64): the digits 0-9 in turn, each a random
    variant of its stroke table set in a random face (``_typeset``)."""
    labels = np.arange(n, dtype=np.int64) % 10
    shapes, widths = [], []
    for digit in labels:
        variants = DIGITS[int(digit)] + (MARKED_ZEROS if digit == 0 else [])
        pieces, piece_widths = _typeset(variants[int(rng.integers(len(variants)))], rng)
        shapes.append(pieces)
        widths.append(piece_widths)
    return render(shapes, widths), labels


# --- doodles: each a function of the generator returning strokes in a unit box -------------

def _star(rng):
    k = int(rng.integers(5, 8))
    a = np.deg2rad(np.arange(2 * k + 1) * 180 / k - 90)
    r = np.where(np.arange(2 * k + 1) % 2 == 0, 0.5, rng.uniform(0.18, 0.3))
    return [np.stack([0.5 + r * np.cos(a), 0.5 + r * np.sin(a)], 1)]


def _heart(rng):
    t = np.linspace(0, 2 * np.pi, 60)
    x = 16 * np.sin(t) ** 3
    y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
    return [np.stack([x, y], 1) / 32]


def _spiral(rng):
    turns = rng.uniform(1.8, 4)
    t = np.linspace(0, turns * 2 * np.pi, int(40 * turns))
    r = 0.5 * t / t[-1]
    return [np.stack([r * np.cos(t), r * np.sin(t)], 1) * rng.choice([-1, 1], 2)]


def _house(rng):
    roof = rng.uniform(0.2, 0.5)
    shape = [line((0, roof), (0, 1), (1, 1), (1, roof), (0, roof)),
             line((0, roof), (0.5, 0), (1, roof))]
    if rng.random() < 0.6:
        shape.append(line((0.4, 1), (0.4, 0.7), (0.6, 0.7), (0.6, 1)))
    return shape


def _arrow(rng):
    head = rng.uniform(0.2, 0.35)
    shape = [line((0, 0.5), (1, 0.5)),
             line((1 - head, 0.5 - head), (1, 0.5), (1 - head, 0.5 + head))]
    a = rng.choice([0, 90, 180, 270, 45, 135, 225, 315])
    m = np.array([[np.cos(np.deg2rad(a)), -np.sin(np.deg2rad(a))],
                  [np.sin(np.deg2rad(a)), np.cos(np.deg2rad(a))]])
    return [s @ m.T for s in shape]


def _face(rng):
    shape = [arc(0.5, 0.5, 0.5, 0.5, 0, 360), arc(0.5, 0.55, 0.25, rng.uniform(0.1, 0.2), 20, 160)]
    eyes = rng.uniform(0.04, 0.08)
    shape += [arc(0.33, 0.35, eyes, eyes, 0, 360), arc(0.67, 0.35, eyes, eyes, 0, 360)]
    return shape


def _zigzag(rng):
    k = int(rng.integers(3, 9))
    x = np.linspace(0, 1, k + 1)
    y = np.where(np.arange(k + 1) % 2 == 0, 0.0, rng.uniform(0.2, 0.6))
    return [np.stack([x, y], 1)]


def _scribble(rng):
    k = int(rng.integers(6, 14))
    points = rng.uniform(0, 1, (k, 2))
    t = np.linspace(0, k - 1, 12 * k)
    return [np.stack([np.interp(t, np.arange(k), points[:, 0]),
                      np.interp(t, np.arange(k), points[:, 1])], 1)]


def _sun(rng):
    k = int(rng.integers(6, 12))
    shape = [arc(0.5, 0.5, 0.22, 0.22, 0, 360)]
    for a in np.deg2rad(np.arange(k) * 360 / k):
        shape.append(line((0.5 + 0.3 * np.cos(a), 0.5 + 0.3 * np.sin(a)),
                          (0.5 + 0.5 * np.cos(a), 0.5 + 0.5 * np.sin(a))))
    return shape


def _cloud(rng):
    k = int(rng.integers(3, 6))
    parts = [arc((i + 0.5) / k, 0.4, 0.5 / k + 0.05, 0.25, 180, 360) for i in range(k)]
    return [np.concatenate(parts), line((0, 0.4), (0, 0.6), (1, 0.6), (1, 0.4))]


def _flower(rng):
    k = int(rng.integers(4, 8))
    shape = [arc(0.5, 0.35, 0.08, 0.08, 0, 360), line((0.5, 0.45), (0.5, 1))]
    for a in np.arange(k) * 360 / k:
        c = np.deg2rad(a)
        shape.append(arc(0.5 + 0.17 * np.cos(c), 0.35 + 0.17 * np.sin(c), 0.09, 0.09, 0, 360))
    return shape


def _polygon(rng):
    k = int(rng.integers(3, 7))
    a = np.sort(rng.uniform(0, 2 * np.pi, k))
    points = np.stack([np.cos(a), np.sin(a)], 1) * rng.uniform(0.6, 1.0, (k, 1))
    shape = [np.concatenate([points, points[:1]])]
    if rng.random() < 0.4:  # a second one inside or beside
        shape.append(shape[0] * rng.uniform(0.3, 0.6) + rng.uniform(-0.3, 0.3, 2))
    return shape


def _wave(rng):
    t = np.linspace(0, 1, 60)
    k = int(rng.integers(1, 4))
    return [np.stack([t, 0.5 * i / max(k, 1) + 0.15 * np.sin(t * rng.uniform(6, 20))], 1)
            for i in range(k)]


def _lightning(rng):
    return [line((0.6, 0), (0.2, 0.55), (0.55, 0.5), (0.25, 1))]


def _coil(rng):
    k = rng.uniform(3, 6)
    t = np.linspace(0, k * 2 * np.pi, int(50 * k))
    return [np.stack([t / t[-1] * 2 + 0.3 * np.cos(t), 0.4 * np.sin(t)], 1)]


def _grid(rng):
    k = int(rng.integers(2, 5))
    shape = [line((i / k, 0), (i / k, 1)) for i in range(k + 1)]
    return shape + [line((0, i / k), (1, i / k)) for i in range(k + 1)]


def _stick_figure(rng):
    return [arc(0.5, 0.15, 0.15, 0.15, 0, 360), line((0.5, 0.3), (0.5, 0.7)),
            line((0.2, 0.45), (0.8, 0.45)), line((0.25, 1), (0.5, 0.7), (0.75, 1))]


def _tree(rng):
    return [line((0.45, 1), (0.45, 0.6)), line((0.55, 1), (0.55, 0.6)),
            arc(0.5, 0.35, 0.4, 0.3, 0, 360)]


def _fish(rng):
    return [arc(0.4, 0.5, 0.4, 0.25, 0, 360), line((0.8, 0.5), (1, 0.3), (1, 0.7), (0.8, 0.5)),
            arc(0.2, 0.45, 0.03, 0.03, 0, 360)]


def _envelope(rng):
    return [line((0, 0), (1, 0), (1, 0.7), (0, 0.7), (0, 0)), line((0, 0), (0.5, 0.4), (1, 0))]


def _hatch(rng):
    k = int(rng.integers(3, 8))
    return [line((i / k, 0), (i / k + 0.3, 1)) for i in range(k)]


def _concentric(rng):
    k = int(rng.integers(2, 4))
    return [arc(0.5, 0.5, 0.5 * (i + 1) / k, 0.5 * (i + 1) / k, 0, 360) for i in range(k)]


def _note(rng):
    heads = int(rng.integers(1, 3))
    shape = []
    for i in range(heads):
        x = 0.25 + 0.5 * i
        shape += [arc(x - 0.12, 0.85, 0.13, 0.09, 0, 360), line((x, 0.85), (x, 0.1))]
    return shape + ([line((0.25, 0.1), (0.75, 0.1))] if heads == 2
                    else [line((0.25, 0.1), (0.55, 0.3), (0.5, 0.45))])


def _key(rng):
    return [arc(0.2, 0.5, 0.18, 0.18, 0, 360), line((0.38, 0.5), (1, 0.5)),
            line((0.8, 0.5), (0.8, 0.68)), line((0.92, 0.5), (0.92, 0.65))]


def _umbrella(rng):
    return [path(arc(0.5, 0.5, 0.5, 0.4, 180, 360), line((1, 0.5), (0, 0.5))),
            path(line((0.5, 0.5), (0.5, 0.9)), arc(0.42, 0.9, 0.08, 0.08, 0, 180))]


def _cup(rng):
    return [line((0.1, 0.2), (0.2, 0.95), (0.7, 0.95), (0.8, 0.2), (0.1, 0.2)),
            arc(0.82, 0.5, 0.15, 0.18, -80, 80)]


def _birds(rng):
    shape = []
    for _ in range(int(rng.integers(1, 4))):
        x, y, w = rng.uniform(0, 0.6), rng.uniform(0, 0.6), rng.uniform(0.2, 0.4)
        shape.append(path(arc(x + w / 4, y + w / 4, w / 4, w / 5, 200, 340),
                          arc(x + 3 * w / 4, y + w / 4, w / 4, w / 5, 200, 340)))
    return shape


def _boat(rng):
    return [line((0, 0.6), (1, 0.6), (0.8, 0.9), (0.2, 0.9), (0, 0.6)),
            line((0.5, 0.6), (0.5, 0)), line((0.5, 0.05), (0.85, 0.5), (0.5, 0.5))]


def _crown(rng):
    k = int(rng.integers(3, 6))
    x = np.linspace(0, 1, 2 * k + 1)
    y = np.where(np.arange(2 * k + 1) % 2 == 0, 0.0, 0.45)
    return [np.concatenate([np.stack([x, y], 1), [[1, 1], [0, 1], [0, 0]]])]


def _mountains(rng):
    k = int(rng.integers(2, 5))
    x = np.linspace(0, 1, 2 * k + 1)
    y = np.where(np.arange(2 * k + 1) % 2 == 0, 1.0, rng.uniform(0, 0.6, 2 * k + 1))
    return [np.stack([x, y], 1)]


def _diamond(rng):
    return [line((0.5, 0), (1, 0.5), (0.5, 1), (0, 0.5), (0.5, 0))] + (
        [line((0, 0.5), (1, 0.5))] if rng.random() < 0.5 else [])


def _ticks(rng):
    """Check marks and crosses, as on a form."""
    if rng.random() < 0.5:
        return [line((0, 0.5), (0.35, 1), (1, 0))]
    return [line((0, 0), (1, 1)), line((1, 0), (0, 1))]


def _loops(rng):
    """A cursive line of loops (a signature, a spring)."""
    k = rng.uniform(3, 7)
    t = np.linspace(0, k * 2 * np.pi, int(40 * k))
    return [np.stack([t / t[-1] * 3 + 0.35 * np.sin(t), 0.5 * np.cos(t) + rng.uniform(0, 0.3)
                      * np.sin(t / 3)], 1)]


def _bars(rng):
    """A bar chart or a barcode: rectangles side by side."""
    k = int(rng.integers(3, 8))
    heights = rng.uniform(0.2, 1, k)
    return [line((i / k, 1), (i / k, 1 - h), ((i + 0.7) / k, 1 - h), ((i + 0.7) / k, 1))
            for i, h in enumerate(heights)] + [line((0, 1), (1, 1))]


def _eye(rng):
    return [path(arc(0.5, 1.0, 0.6, 0.6, 215, 325), arc(0.5, 0.0, 0.6, 0.6, 35, 145)),
            arc(0.5, 0.5, 0.17, 0.17, 0, 360)]


def _tally(rng):
    k = int(rng.integers(3, 6))
    shape = [line((i * 0.2, 0), (i * 0.2, 1)) for i in range(k)]
    return shape + ([line((-0.1, 0.7), (0.9, 0.3))] if k == 5 else [])


DOODLES = (_star, _heart, _spiral, _house, _arrow, _face, _zigzag, _scribble, _sun, _cloud,
           _flower, _polygon, _wave, _lightning, _coil, _grid, _stick_figure, _tree, _fish,
           _envelope, _hatch, _concentric, _note, _key, _umbrella, _cup, _birds, _boat,
           _crown, _mountains, _diamond, _ticks, _loops, _bars, _eye, _tally)


# --- photo-like textures and noise: ink maps framed as uploads ----------------------------

def _smooth_field(rng, size: int = 48) -> np.ndarray:
    """Low-frequency random field in [0, 1]: a random grid enlarged bilinearly."""
    k = int(rng.integers(3, 9))
    coarse = rng.random((k, k))
    idx = np.linspace(0, k - 1, size)
    low = np.minimum(np.floor(idx).astype(int), k - 2)
    f = idx - low
    rows = coarse[low] * (1 - f)[:, None] + coarse[low + 1] * f[:, None]
    return rows[:, low] * (1 - f) + rows[:, low + 1] * f


def _texture(rng) -> np.ndarray:
    """One photo-like ink map: smooth blobs, filled shapes, stripes, checks, noise, or a mix."""
    size = 48
    kind = int(rng.integers(6))
    yy, xx = np.mgrid[0:size, 0:size] / size
    if kind == 0:  # smooth light and shade, the darker part as ink
        field = _smooth_field(rng, size)
        ink = np.clip((field - rng.uniform(0.2, 0.6)) * rng.uniform(2, 6), 0, 1)
    elif kind == 1:  # filled ellipses and rectangles
        ink = np.zeros((size, size))
        for _ in range(int(rng.integers(1, 5))):
            c, r = rng.uniform(0.1, 0.9, 2), rng.uniform(0.1, 0.45, 2)
            if rng.random() < 0.5:
                inside = ((yy - c[0]) / r[0]) ** 2 + ((xx - c[1]) / r[1]) ** 2 < 1
            else:
                inside = (np.abs(yy - c[0]) < r[0]) & (np.abs(xx - c[1]) < r[1])
            ink = np.maximum(ink, inside * rng.uniform(0.3, 1))
    elif kind == 2:  # stripes at any angle and frequency
        a, f = rng.uniform(0, np.pi), rng.uniform(3, 12)
        ink = 0.5 + 0.5 * np.sin(2 * np.pi * f * (xx * np.cos(a) + yy * np.sin(a)))
    elif kind == 3:  # checks or dots
        f = rng.uniform(3, 10)
        ink = ((np.floor(xx * f) + np.floor(yy * f)) % 2).astype(float)
    elif kind == 4:  # noise, fine or coarse
        ink = rng.random((size, size)) * (rng.random((size, size)) < rng.uniform(0.1, 1))
    else:  # a textured object on a smooth background
        ink = _smooth_field(rng, size) * rng.random((size, size)) ** 0.5
    ink = ink * (0.6 + 0.4 * _smooth_field(rng, size))  # uneven lighting
    return _as_seen(ink.astype(np.float32))


def _as_seen(ink: np.ndarray) -> np.ndarray:
    """An ink map framed as the server frames an upload's ink: the ink scaled so that its
    90th percentile is 1 (the server's ink stage), then ``models.framing.frame`` (the
    normalisation stage itself: filled shapes are thinned, hairlines thickened)."""
    visible = ink[ink > 0.01]
    if not visible.size:  # nothing the server would see as ink: a blank picture
        return np.zeros((SIDE, SIDE), dtype=np.float32)
    peak = float(np.percentile(visible, 90))
    return framing.frame(np.minimum(ink / peak, 1).astype(np.float32) * (ink > 0.01))


def _box(yy, xx, top, bottom, left, right):
    return (yy >= top) & (yy <= bottom) & (xx >= left) & (xx <= right)


THINGS = 7


def _thing(yy: np.ndarray, xx: np.ndarray, kind: int, rng) -> np.ndarray:
    """Coverage (float, 0-1) of a round subject of a photo: a crescent moon, a face, a coin,
    a bottle, a cup seen from above, a head and shoulders, an animal's head."""
    r = np.hypot(yy - 0.5, xx - 0.5)
    if kind == 0:  # a crescent: a disc less a shifted disc
        shift = rng.uniform(0.1, 0.35) * np.array([np.cos(a := rng.uniform(0, 6.3)), np.sin(a)])
        return ((r < 0.45) & (np.hypot(yy - 0.5 - shift[0], xx - 0.5 - shift[1]) > 0.42)) * 1.0
    if kind == 1:  # a face: a bright oval with dark eyes and mouth
        face = (((yy - 0.5) / 0.48) ** 2 + ((xx - 0.5) / 0.36) ** 2 < 1) * 1.0
        for cx in (0.36, 0.64):
            face[np.hypot(yy - 0.4, xx - cx) < 0.05] = 0.2
        face[(np.abs(yy - 0.72) < 0.03) & (np.abs(xx - 0.5) < 0.14)] = 0.3
        return face
    if kind == 2:  # a coin: a rim and an embossed face
        return np.where(r < 0.38, 0.6 + 0.4 * (np.abs(r - 0.2) < 0.04), (r < 0.48) * 1.0)
    if kind == 3:  # a bottle: a neck and a body
        return ((_box(yy, xx, 0.35, 0.98, 0.3, 0.7) | _box(yy, xx, 0.02, 0.4, 0.44, 0.56))
                | ((np.hypot(yy - 0.35, xx - 0.5) < 0.2) & (yy > 0.25))) * 1.0
    if kind == 4:  # a cup from above: a dark drink in a bright rim, a handle
        cup = (r < 0.4) * 1.0 + (_box(yy, xx, 0.42, 0.58, 0.8, 0.98)) * 1.0
        return np.minimum(np.where(r < 0.3, rng.uniform(0.2, 0.5), cup), 1)
    if kind == 5:  # a head and shoulders
        return ((np.hypot(yy - 0.28, xx - 0.5) < 0.22)
                | ((((yy - 1.0) / 0.45) ** 2 + ((xx - 0.5) / 0.48) ** 2) < 1)) * 1.0
    ears = (np.abs(xx - 0.5) > 0.15) & (yy < 0.45) & (np.abs(xx - 0.5) < 0.45 - (0.45 - yy) * 0.5)
    return ((np.hypot(yy - 0.58, xx - 0.5) < 0.38) | ears) * 1.0  # an animal's head


def _silhouette(rng) -> np.ndarray:
    """A filled, shaded object photographed on a plain ground, as catalogue pictures of
    clothes, bags and shoes are (shirts, trousers, dresses, bags, shoes, as unions of boxes),
    or the round subjects of ordinary photos (``_thing``)."""
    size = 48
    yy, xx = np.mgrid[0:size, 0:size] / size
    kind = int(rng.integers(5 + THINGS))
    w = rng.uniform(0.3, 0.45)
    if kind == 0:  # a shirt or a coat: body and sleeves
        sleeve = rng.uniform(0.3, 0.8)
        inside = _box(yy, xx, 0.1, 0.95, 0.5 - w / 2, 0.5 + w / 2) | (
            _box(yy, xx, 0.1, 0.1 + sleeve, 0.5 - w / 2 - 0.15, 0.5 + w / 2 + 0.15)
            & (np.abs(xx - 0.5) - w / 2 < (yy - 0.05) * 0.6))
    elif kind == 1:  # trousers: two legs
        gap = rng.uniform(0.01, 0.06)
        inside = _box(yy, xx, 0.02, 0.98, 0.5 - w / 2, 0.5 + w / 2) & ~(
            _box(yy, xx, rng.uniform(0.2, 0.4), 1, 0.5 - gap, 0.5 + gap))
    elif kind == 2:  # a dress: widening downwards
        inside = (np.abs(xx - 0.5) < 0.1 + (yy * rng.uniform(0.2, 0.4))) & (yy > 0.03) & (
            yy < 0.97)
    elif kind == 3:  # a bag: a box and a handle
        inside = _box(yy, xx, 0.35, 0.95, 0.05, 0.95) | (
            (np.abs(np.hypot(yy - 0.35, xx - 0.5) - 0.2) < 0.04) & (yy < 0.35))
    elif kind == 4:  # a shoe: a sole and a heel or an ankle
        inside = _box(yy, xx, 0.55, 0.8, 0.02, 0.98) | _box(yy, xx, 0.25, 0.8, 0.02,
                                                            rng.uniform(0.3, 0.55))
    else:  # things photographed: round and lit, often with darker parts
        inside = _thing(yy, xx, kind - 5, rng)
    shade = 0.4 + 0.6 * _smooth_field(rng, size)
    if rng.random() < 0.5:  # a print, stripes or a texture on the fabric
        shade = shade * (0.6 + 0.4 * rng.random((size, size)) ** rng.uniform(0.3, 3))
    ink = inside * shade * rng.uniform(0.5, 1.0)
    if rng.random() < 0.5:
        ink = ink[:, ::-1]
    return _as_seen(ink.astype(np.float32))


def _serifs(shape: list, rng: np.random.Generator) -> list:
    """Short strokes across the ends of the straight strokes of a letter, as a serif face has."""
    length = rng.uniform(0.06, 0.14)
    out = []
    for stroke in shape:
        if len(stroke) != 2:  # only the straight strokes
            continue
        direction = stroke[1] - stroke[0]
        across = np.array([-direction[1], direction[0]]) / max(np.hypot(*direction), 1e-9)
        out += [np.stack([end - length * across, end + length * across]) for end in stroke]
    return out


#: Kinds of "not a digit" and their shares of ``not_digits``.
KINDS = {"symbols": 0.35, "doodles": 0.3, "textures": 0.2, "objects": 0.15}


def not_digits(n: int, rng: np.random.Generator, kinds: dict[str, float] | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(images (n, 28, 28) float32, kind index (n,) into KINDS): letters and symbols, doodles
    and photo-like textures in the given shares."""
    kinds = kinds or KINDS
    names = list(kinds)
    kind = rng.choice(len(names), n, p=np.array(list(kinds.values())) / sum(kinds.values()))
    out = np.empty((n, SIDE, SIDE), dtype=np.float32)
    drawn = np.flatnonzero(np.isin(kind, [names.index(k) for k in ("symbols", "doodles")
                                          if k in names]))
    symbols = list(SYMBOLS.values())
    shapes, widths = [], []
    for i, width in zip(drawn, _widths(len(drawn), rng)):
        if names[kind[i]] == "symbols":
            typeset = rng.random() < 0.5  # serifs, thick and thin strokes, no tremor
            shape = symbols[int(rng.integers(len(symbols)))]
            if typeset:
                shape = shape + _serifs(shape, rng)
                shapes.append(hand(shape, rng, tremor=0.0, rotation=8, wobble=0.005))
                widths.append(width * rng.uniform(0.5, 1.3, len(shape)))
                continue
        else:
            shape = DOODLES[int(rng.integers(len(DOODLES)))](rng)
        shapes.append(hand(shape, rng, tremor=rng.uniform(0.0, 0.8), rotation=20))
        widths.append(width)
    if shapes:
        out[drawn] = render(shapes, widths)
    for i in np.setdiff1d(np.arange(n), drawn):
        out[i] = _texture(rng) if names[kind[i]] == "textures" else _silhouette(rng)
    return out, kind


#: The generated images' own random stream ("synt"), as trainer.flags has its own: the model's
#: initialisation and every epoch's shuffle and augmentation draw from theirs.
SYNTHETIC_STREAM = 0x73796E74
#: The typeset digits' sub-stream ("type").
TYPESET_STREAM = 0x74797065
#: The typed letters' sub-stream ("font").
TYPED_STREAM = 0x666F6E74


def clothes(pictures: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 28, 28) float32: ``n`` of ``pictures`` (Fashion-MNIST's, uint8 or float in [0, 1],
    light on black) picked at random, as the server would frame them uploaded (the pipeline
    thins what is filled: a shirt reaches the model as its outline's skeleton, not as drawn)."""
    pick = np.sort(rng.choice(len(pictures), n, replace=False))
    scale = 255.0 if pictures.dtype == np.uint8 else 1.0
    return np.stack([_as_seen(pictures[i] / np.float32(scale)) for i in pick]) if n else (
        np.zeros((0, SIDE, SIDE), dtype=np.float32))


def add_synthetic(split: Split, pen: int, negatives: int, seed: int,
                  pictures: np.ndarray | None = None, n_clothes: int = 0,
                  typeset: int = 0, typed: int = 0, typed_digits: int = 0,
                  fonts: list | None = None) -> Split:
    """``split`` with ``pen`` pen-drawn digits, ``negatives`` generated images, ``n_clothes``
    of ``pictures`` (clothes) and ``typed`` letters and symbols set in ``fonts``
    (trainer.typefaces) labelled 10 ("not a digit"), ``typeset`` typeset digits and
    ``typed_digits`` digits set in ``fonts`` appended;
    the same arguments (and font files) give the same arrays."""
    rng = np.random.default_rng([seed, SYNTHETIC_STREAM])
    pen_images, pen_labels = pen_digits(pen, rng)
    negative_images, _ = not_digits(negatives, rng)
    worn = clothes(pictures, n_clothes, rng) if n_clothes else np.zeros((0, SIDE, SIDE),
                                                                        np.float32)
    # drawn last, from their own stream: the images above stay those of a run without them
    type_images, type_labels = typeset_digits(
        typeset, np.random.default_rng([seed, SYNTHETIC_STREAM, TYPESET_STREAM]))
    font_rng = np.random.default_rng([seed, SYNTHETIC_STREAM, TYPED_STREAM])
    letters = typefaces.typed(typed, font_rng, fonts or [])
    font_digits, font_labels = typefaces.typed_digits(typed_digits, font_rng, fonts or [])
    return Split(np.concatenate([split.images, pen_images, negative_images, worn, type_images,
                                 letters, font_digits]),
                 np.concatenate([split.labels, pen_labels,
                                 np.full(negatives + len(worn), 10, dtype=np.int64),
                                 type_labels, np.full(len(letters), 10, dtype=np.int64),
                                 font_labels]))
