"""Framing ink as MNIST's digits are framed: cropped to the ink, strokes brought into MNIST's
range of widths, the long side fitted to 20 pixels, the centre of mass at (14, 14) in 28x28.

Pure numpy, shared by the server (stages 5-6 of ``server.imaging.to_mnist``: an upload's ink)
and the trainer (its generated and borrowed "not a digit" images), so that the model trains
on what the service shows it. The whole upload pipeline: docs/serving.md.
"""

from __future__ import annotations

import functools

import numpy as np

from models import arrays

BOX = 20  # MNIST's size-normalisation box
SIDE = 28
CENTRE = 14.0  # MNIST's mean centre of mass, 0-based: not 13.5 (docs/benchmarks.md)
# Stroke widths in pixels of the 20-pixel box, around MNIST's own range (docs/benchmarks.md):
# pen lines thinner than THIN are thickened to TARGET; marker lines beyond THICK are thinned
# towards THINNED, which reads fat markers best.
THIN, TARGET, THICK, THINNED = 1.5, 2.0, 2.7, 2.0
# Longest side strokes are normalised at: 4x the 20-pixel box keeps their shape, and bounds
# the morphology's cost (radius <= STROKE_SIZE / 2 passes over STROKE_SIZE^2 pixels).
STROKE_SIZE = 80


class NoInkError(ValueError):
    """There is no ink to frame."""


def frame(ink: np.ndarray) -> np.ndarray:
    """An ink map of any size (0: paper, up to 1: ink) -> MNIST's 28x28, float32."""
    return normalise(crop_to_ink(ink))


def normalise(crop: np.ndarray) -> np.ndarray:
    """Ink cropped to it (``crop_to_ink``) -> MNIST's 28x28: strokes brought into MNIST's
    range of widths, the long side fitted to 20 pixels, the centre of mass at (14, 14)."""
    crop = fit(_normalise_stroke(crop), BOX)
    total = float(crop.sum())
    if total <= 0:
        raise NoInkError("no ink")
    h, w = crop.shape
    xs, ys = arrays.ramps(h, w)
    cy = float((crop.sum(axis=1) * ys).sum()) / total
    cx = float((crop.sum(axis=0) * xs).sum()) / total
    # integer shift: MNIST's own digits then come back unchanged (no resampling blur)
    top = min(max(round(CENTRE - cy), 0), SIDE - h)
    left = min(max(round(CENTRE - cx), 0), SIDE - w)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top:top + h, left:left + w] = crop
    return out


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The part of ``ink`` (a view) between its first and last rows and columns of ink."""
    rows = ink.any(axis=1).nonzero()[0]
    cols = ink.any(axis=0).nonzero()[0]
    if rows.size == 0:
        raise NoInkError("no ink")
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def fit(crop: np.ndarray, long_side: int) -> np.ndarray:
    """Resize so that the long side is ``long_side`` pixels, aspect ratio kept."""
    h, w = crop.shape
    scale = long_side / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == (w, h):
        return crop
    # area averaging when shrinking is the anti-aliasing MNIST describes; bilinear to enlarge
    out = crop.astype(np.float32, copy=False)  # a new array below: one axis changes at least
    if w != size[0]:
        out = (out @ _resampling(w, size[0]).T).astype(np.float32)
    if h != size[1]:
        out = (_resampling(h, size[1]) @ out).astype(np.float32)
    np.maximum(out, 0, out=out)
    return np.minimum(out, 1, out=out)


@functools.lru_cache(maxsize=256)
def _resampling(size: int, new_size: int) -> np.ndarray:
    """The (new_size, size) matrix of Pillow's resize along one axis: its box filter to shrink
    (area averaging), bilinear to enlarge, with its coefficients (Resample.c's
    precompute_coeffs). Two small products cost less than a round trip through an image.
    Cached (crops come in a few sizes): read-only."""
    scale = size / new_size
    filter_scale = max(scale, 1.0)
    support = (0.5 if scale > 1 else 1.0) * filter_scale
    centre = (np.arange(new_size) + 0.5) * scale
    low = np.maximum((centre - support + 0.5).astype(np.intp), 0)  # C's (int): toward zero
    high = np.minimum((centre + support + 0.5).astype(np.intp), size)
    x = np.arange(size)
    t = (x[None, :] - centre[:, None] + 0.5) * (1.0 / filter_scale)
    if scale > 1:
        weights = ((t > -0.5) & (t <= 0.5)).astype(np.float64)
    else:
        weights = np.maximum(1.0 - np.abs(t), 0.0)
    weights[(x[None, :] < low[:, None]) | (x[None, :] >= high[:, None])] = 0
    total = weights.sum(axis=1, keepdims=True)
    np.divide(weights, total, out=weights, where=total != 0)
    weights.flags.writeable = False
    return weights


def _radius(width: float, scale: float) -> int:
    """Pixels (at ``scale`` pixels of the 20-pixel box per pixel) to dilate a stroke of
    ``width`` box pixels by to reach TARGET, or to erode it by towards THINNED."""
    if width < THIN:
        return round((TARGET - width) / (2 * scale))
    return int((width - THINNED) / (2 * scale))


def stroke_change(crop: np.ndarray) -> float | None:
    """The stroke width (in pixels of the 20-pixel box) that ``normalise`` brings into MNIST's
    range, or None when it leaves the strokes as they are."""
    mask = np.pad(crop > 0.5, 1)  # the crop's frame is the ink's border too
    width = arrays.stroke_width(mask) * BOX / max(crop.shape)
    if width == 0:  # nothing above 0.5
        return None
    if THIN <= width <= THICK or _radius(width, BOX / max(crop.shape)) == 0:
        return None  # in range, or less than a pixel off at the upload's own scale (MNIST)
    return width


def _normalise_stroke(crop: np.ndarray) -> np.ndarray:
    """Bring pen-thin and marker-thick strokes into MNIST's range, measured at the box scale.

    A 1-pixel pen line on a phone photo would otherwise shrink to a faint hairline in 20x20,
    and a fat marker fills the loops of 6, 8 and 9. MNIST's own digits are left alone. The
    morphology runs on at most STROKE_SIZE a side with a radius of at most half that: its
    cost is bounded whatever the shape (a filled square has no inner edge at all).
    """
    width = stroke_change(crop)
    if width is None:
        return crop
    # at one scale whatever the upload's: fine steps of the radius, and a bounded cost
    fitted = fit(crop, STROKE_SIZE)
    radius = min(_radius(width, BOX / STROKE_SIZE), STROKE_SIZE // 2)
    if width < THIN:
        return crop_to_ink(arrays.morph(np.pad(fitted, radius), radius, np.maximum))
    pieces = arrays.label(fitted > 0.5)[1]
    thinned = fitted
    for step in range(radius):
        thinner = arrays.morph_step(thinned, step, np.minimum)
        # stop before a stroke breaks or vanishes: blocky, blurry enlargements of small scans
        # have thick strokes with thin joints
        if arrays.label(thinner > 0.5)[1] != pieces:
            break
        thinned = thinner
    return crop if thinned is fitted else crop_to_ink(thinned)
