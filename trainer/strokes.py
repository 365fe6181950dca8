"""Pen strokes drawn in numpy: shapes as polylines, a pen's tremor and width, MNIST's framing.

The trainer draws its own pen-written digits and its own "not a digit" examples (letters,
symbols, doodles) without PIL: a shape is a list of strokes, each an (n, 2) array of (x, y)
points in a box one unit high (y down, as on a page). ``render`` moves and wobbles the points
as a hand would, fits the whole to MNIST's 20-pixel box, draws each stroke as an antialiased
line of the pen's width (exact distance to each segment) and centres the ink's mass at (14, 14),
as the server's imaging pipeline does with an upload.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

SIDE, BOX, CENTRE = 28, 20, 14.0
#: Points per unit of length when curves are sampled (a unit is 20 pixels: ~1.5 px apart).
DENSITY = 14
#: Pixels between the points a stroke is stamped at, and the stamp's reach (a pen up to 4 px).
STAMP_SPACING = 0.5
_OFFSETS = np.stack(np.meshgrid(np.arange(-3, 4), np.arange(-3, 4)), axis=-1).reshape(-1, 2).astype(
    np.float32)

Shape = list  # of (n, 2) float arrays: the strokes of one shape


def arc(cx: float, cy: float, rx: float, ry: float, start: float, end: float) -> np.ndarray:
    """Points of an elliptic arc from ``start`` to ``end`` degrees (0: right, 90: down)."""
    n = max(3, int(abs(end - start) / 360 * 2 * np.pi * max(rx, ry) * DENSITY) + 1)
    a = np.deg2rad(np.linspace(start, end, n))
    return np.stack([cx + rx * np.cos(a), cy + ry * np.sin(a)], axis=1)


def line(*points: tuple[float, float]) -> np.ndarray:
    """A polyline through ``points``."""
    return np.asarray(points, dtype=np.float64)


def path(*parts: np.ndarray) -> np.ndarray:
    """Parts joined into one stroke (the pen does not lift between them)."""
    return np.concatenate(parts)


def _resample(stroke: np.ndarray, spacing: float) -> np.ndarray:
    """The stroke's points every ``spacing`` along its length (ends kept)."""
    if len(stroke) < 2:
        return stroke
    steps = np.hypot(*np.diff(stroke, axis=0).T)
    along = np.concatenate([[0.0], np.cumsum(steps)])
    n = max(2, int(np.ceil(along[-1] / spacing)) + 1)
    at = np.linspace(0.0, along[-1], n)
    return np.stack([np.interp(at, along, stroke[:, 0]), np.interp(at, along, stroke[:, 1])], 1)


def _smooth_noise(n: int, rng: np.random.Generator, amplitude: float, wavelength: float,
                  spacing: float) -> np.ndarray:
    """(n, 2) offsets that wander smoothly (a few random sinusoids) plus a little jitter."""
    t = np.arange(n) * spacing
    out = np.zeros((n, 2))
    for _ in range(3):
        freq = rng.uniform(0.5, 2.0) / wavelength
        out += np.sin(2 * np.pi * freq * t[:, None] + rng.uniform(0, 2 * np.pi, 2)) * rng.uniform(
            0.3, 1.0, 2)
    return amplitude * out / 2 + rng.normal(0, amplitude * 0.15, (n, 2))


def hand(shape: Shape, rng: np.random.Generator, tremor: float = 0.5, rotation: float = 10.0,
         shear: float = 0.25, squeeze: float = 0.15, wobble: float = 0.03) -> Shape:
    """``shape`` as a hand draws it: turned, slanted, squeezed, each control point moved a
    little (``wobble``, in units), and a tremor of about ``tremor`` pixels along the strokes."""
    a = np.deg2rad(rng.uniform(-rotation, rotation))
    s = rng.uniform(-shear, shear)
    sx = 1 + rng.uniform(-squeeze, squeeze)
    m = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) @ np.array(
        [[sx, -s], [0.0, 1.0]])
    spacing = 1.0 / DENSITY
    out = []
    for stroke in shape:
        moved = stroke + rng.normal(0, wobble, 2) + rng.normal(0, wobble / 3, stroke.shape)
        dense = _resample(moved @ m.T, spacing)
        # tremor in pixels of the final 20-pixel box: one unit is about BOX pixels
        dense = dense + _smooth_noise(len(dense), rng, tremor / BOX, 0.4, spacing)
        out.append(dense)
    return out


#: Shapes drawn at once: the stamps of a block (~300 points x 49 pixels a shape) stay small.
RENDER_BLOCK = 256


def render(shapes: Sequence[Shape], widths: Sequence) -> np.ndarray:
    """(N, 28, 28) float32 in [0, 1]: each shape's strokes drawn with a pen of ``widths[i]``
    pixels (one number, or one per stroke: a font's thick and thin strokes), the ink's long
    side fitted to 20 pixels and its mass centred at (14, 14)."""
    if len(shapes) > RENDER_BLOCK:
        return np.concatenate([render(shapes[i:i + RENDER_BLOCK], widths[i:i + RENDER_BLOCK])
                               for i in range(0, len(shapes), RENDER_BLOCK)])
    n = len(shapes)
    points, radii, owners = [], [], []
    for i, (shape, width) in enumerate(zip(shapes, widths)):
        per_stroke = np.broadcast_to(np.asarray(width, dtype=np.float32), (len(shape),))
        low = np.min([s.min(axis=0) for s in shape], axis=0)
        high = np.max([s.max(axis=0) for s in shape], axis=0)
        scale = (BOX - float(per_stroke.max())) / max(float((high - low).max()), 1e-6)
        offset = CENTRE - (low + high) / 2 * scale
        for stroke, stroke_width in zip(shape, per_stroke):
            dense = _resample(stroke * scale + offset, STAMP_SPACING)
            points.append(dense)
            radii.append(np.full(len(dense), stroke_width / 2, dtype=np.float32))
            owners.append(np.full(len(dense), i))
    owners = np.concatenate(owners)
    points = np.concatenate(points).astype(np.float32)
    radius = np.concatenate(radii)
    # each point stamps a disc of the pen's radius (antialiased by distance) on the pixels
    # around it; points half a pixel apart draw the segment between them to within 0.03 px
    base = np.rint(points)
    near_x = base[:, 0, None] + _OFFSETS[None, :, 0]  # (m, 49) pixel columns, float32
    near_y = base[:, 1, None] + _OFFSETS[None, :, 1]
    distance = np.hypot(near_x - points[:, 0, None], near_y - points[:, 1, None])
    cover = np.clip(radius[:, None] + np.float32(0.5) - distance, 0, 1)
    inside = ((cover > 0) & (near_x >= 0) & (near_y >= 0) & (near_x < SIDE)
              & (near_y < SIDE))
    flat = (owners[:, None] * (SIDE * SIDE) + near_y.astype(np.int64) * SIDE
            + near_x.astype(np.int64))
    out = np.zeros(n * SIDE * SIDE, dtype=np.float32)
    np.maximum.at(out, flat[inside], cover[inside])
    return centre_mass(out.reshape(n, SIDE, SIDE))


def centre_mass(images: np.ndarray) -> np.ndarray:
    """Each image shifted by whole pixels so that its ink's mass sits at (14, 14), in place."""
    r = np.arange(SIDE, dtype=np.float32)
    total = np.maximum(images.sum(axis=(1, 2)), 1e-6)
    rows = np.rint(CENTRE - (images.sum(axis=2) @ r) / total).astype(int)
    cols = np.rint(CENTRE - (images.sum(axis=1) @ r) / total).astype(int)
    for i in np.flatnonzero((rows != 0) | (cols != 0)):
        ys, xs = np.nonzero(images[i])
        if not len(ys):
            continue
        dr = int(np.clip(rows[i], -ys.min(), SIDE - 1 - ys.max()))
        dc = int(np.clip(cols[i], -xs.min(), SIDE - 1 - xs.max()))
        images[i] = np.roll(images[i], (dr, dc), axis=(0, 1))
    return images


def _area_matrix(size: int, new_size: int) -> np.ndarray:
    """(new_size, size): each new pixel averages the old pixels it covers (or interpolates,
    when enlarging)."""
    if new_size >= size:
        centres = (np.arange(new_size) + 0.5) * size / new_size - 0.5
        low = np.clip(np.floor(centres).astype(int), 0, size - 1)
        high = np.minimum(low + 1, size - 1)
        frac = np.clip(centres - low, 0, 1)
        m = np.zeros((new_size, size))
        m[np.arange(new_size), low] += 1 - frac
        m[np.arange(new_size), high] += frac
        return m
    edges = np.linspace(0, size, new_size + 1)
    pixel = np.arange(size)
    overlap = np.clip(np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel),
                      0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def fit_box(ink: np.ndarray) -> np.ndarray:
    """An ink map of any size (0: paper) cropped to its ink, its long side fitted to 20 pixels
    and its mass centred in 28x28, as the server's pipeline frames an upload; float32."""
    ys, xs = np.nonzero(ink > 0.02)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    if not len(ys):
        return out
    crop = ink[ys.min():ys.max() + 1, xs.min():xs.max() + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = _area_matrix(h, nh) @ crop @ _area_matrix(w, nw).T
    top, left = (SIDE - nh) // 2, (SIDE - nw) // 2
    out[top:top + nh, left:left + nw] = np.clip(small, 0, 1)
    return centre_mass(out[None])[0]
