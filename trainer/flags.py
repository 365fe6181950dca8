"""Flagged 1s: upright MNIST 1s given a Helvetica-style flag at the top of the stem.

Typed 1s (FreeSans, Arial, Helvetica) have a long flag going left and down from the top of the
stem and no foot; MNIST's 1s almost never do, so the model reads such a 1 as a 7 about half the
time. Half the training split's fairly upright 1s get a flag once, before training, in place
(the per-batch augmentation then warps them like any other image).

In place rather than appended, by measurement (seeds 0-2, README "Benchmarks"): the
same number of images keeps the class balance, the training time, and every epoch's shuffle
and augmentation draws exactly those of a run without flags. Appended, the 1,514 extra images
reshuffled everything and one seed of three lost 11 points on oblique 6s (read as 5).

The flag is drawn the way a pen would: a straight stroke as wide as the digit's own strokes,
with a round end, supersampled 4x and area-averaged, in the digit's ink (the 90th percentile of
its ink pixels). In numpy, as the trainer draws (Pillow only reads its fonts); it carries the
ink of the same stroke drawn with PIL's ImageDraw to within 1% on MNIST's 1s
(tests/test_flag_ones.py).

Randomness comes from its own stream, ``default_rng([seed, FLAG_STREAM])``: the model's
initialisation, shuffling and per-batch augmentation draw exactly what they draw without it.
"""

from __future__ import annotations

import numpy as np

SIZE = 28
FLAG_STREAM = 0x666C6167  # "flag": a second key, never an epoch number of the loop's streams
SUPERSAMPLE = 4
INK = 0.3  # a pixel above this is ink (the images are in [0, 1])


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask, 2 * area / perimeter (a long stroke: 2wL / 2L)."""
    area = np.count_nonzero(mask)
    perimeter = (np.count_nonzero(mask[:, 1:] != mask[:, :-1])
                 + np.count_nonzero(mask[1:, :] != mask[:-1, :]))
    return 2 * area / max(perimeter, 1)


def slant(images: np.ndarray) -> np.ndarray:
    """(n,) columns per row of each image's principal ink axis (0: upright, +: top to the right)."""
    w = np.where(images > INK, images, 0).astype(np.float64)
    total = np.maximum(w.sum(axis=(1, 2)), 1e-9)
    r = np.arange(SIZE, dtype=np.float64)
    mean_r = (w.sum(axis=2) @ r) / total
    mean_c = (w.sum(axis=1) @ r) / total
    dr = r[None, :, None] - mean_r[:, None, None]
    dc = r[None, None, :] - mean_c[:, None, None]
    c_rr = (w * dr * dr).sum(axis=(1, 2)) / total
    c_rc = (w * dr * dc).sum(axis=(1, 2)) / total
    return -c_rc / np.maximum(c_rr, 1e-6)


# sub-pixel centres of the 4x canvas, in canvas units: sub-pixel k covers [k, k + 1), as in PIL,
# so 28x28 pixel c (centre c in array indices) covers [4c, 4c + 4) and its centre is 4c + 2
_CANVAS = np.arange(SIZE * SUPERSAMPLE, dtype=np.float32) + np.float32(0.5)


def _coverage(start: tuple[float, float], end: tuple[float, float], width: float) -> np.ndarray:
    """(28, 28) float32 in [0, 1]: the share of each pixel's 4x4 sub-pixels inside a stroke of
    ``width`` from ``start`` (a flat end, inside the stem) to ``end`` (a round end); points are
    (x, y) in canvas units."""
    (x0, y0), (x1, y1) = start, end
    dx, dy = x1 - x0, y1 - y0
    length = max(float(np.hypot(dx, dy)), 1e-6)
    px = _CANVAS[None, :] - x0  # columns
    py = _CANVAS[:, None] - y0  # rows
    along = (px * dx + py * dy) / length
    across = np.abs(px * dy - py * dx) / length
    radius = width / 2
    inside = ((along >= 0) & (along <= length) & (across <= radius)) | (
        (_CANVAS[None, :] - x1) ** 2 + (_CANVAS[:, None] - y1) ** 2 <= radius * radius)
    s = SUPERSAMPLE
    return inside.reshape(SIZE, s, SIZE, s).mean(axis=(1, 3), dtype=np.float32)


def add_flag(image: np.ndarray, length: float, angle: float, width_factor: float) -> np.ndarray:
    """``image`` (28, 28) with a flag from the top of its stem, going left and down.

    ``length``: a fraction of the ink's height; ``angle``: degrees below the horizontal;
    ``width_factor``: times the digit's own stroke width.
    """
    ink = image > INK
    ys, xs = np.nonzero(ink)
    if ys.size < 5:
        return image
    top = ys.min()
    x_top, y_top = xs[ys <= top + 1].mean(), top + 0.5
    flag_length = length * (ys.max() - top + 1)
    a = np.deg2rad(angle)
    x_end, y_end = x_top - flag_length * np.cos(a), y_top + flag_length * np.sin(a)
    s = SUPERSAMPLE
    width = round(max(1.2, stroke_width(ink)) * s * width_factor)  # whole sub-pixels
    flag = _coverage((x_top * s + s / 2, y_top * s), (x_end * s + s / 2, y_end * s), width)
    return np.maximum(image, flag * np.float32(np.percentile(image[ink], 90)))


def flag_ones(images: np.ndarray, labels: np.ndarray, seed: int, fraction: float = 0.5,
              max_slant: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """(indices, flagged): ``fraction`` of the fairly upright 1s (|slant| < ``max_slant``) among
    ``images``, sorted, and their flagged copies, (k, 28, 28) float32. The same arguments give
    the same result.

    Flags are 18-35% of the digit's height long, 25-55 degrees below the horizontal, 0.8-1.1
    times its stroke width: the range of sans-serif typefaces' 1s.
    """
    rng = np.random.default_rng([seed, FLAG_STREAM])
    ones = np.flatnonzero(labels == 1)
    ones = ones[np.abs(slant(images[ones])) < max_slant] if ones.size else ones
    pick = np.sort(rng.choice(ones, int(fraction * len(ones)), replace=False))
    lengths = rng.uniform(0.18, 0.35, len(pick))
    angles = rng.uniform(25, 55, len(pick))
    widths = rng.uniform(0.8, 1.1, len(pick))
    out = np.empty((len(pick), SIZE, SIZE), dtype=np.float32)
    for i, k in enumerate(pick):
        out[i] = add_flag(images[k], lengths[i], angles[i], widths[i])
    return pick, out
