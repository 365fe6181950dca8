"""Stages 5-6 of ``to_mnist``: the digit's ink, cropped, brought to MNIST's form
(``models.framing``, which the trainer shares); and the check that an upload is in that form
already. The whole pipeline: docs/serving.md."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from models import arrays, framing
from models.framing import BOX, CENTRE, SIDE
from server.imaging.errors import NoDigitFound

# An upload already in MNIST's format is returned as it is when a tenth of its ink is at least
# this bright (the 90th percentile of the ink, which the pipeline would scale to 1, as nearly
# all of MNIST's test digits do): the pipeline's scaling would change it by less than 0.05.
MNIST_INK = 0.95
# What a digit needs, at least: ink MIN_HEIGHT pixels tall (of the picture the pipeline works
# on) in a picture at least that tall and MIN_WIDTH wide, and no more than MAX_ASPECT times
# wider than tall (MNIST's widest digits are 2.2 times their height). A lit pixel, a speck, a
# hairline rule along an edge, a picture a few pixels tall or a single column of pixels holds
# no digit, whatever the model would answer for it. A narrow picture may: a 1 scanned at
# 8-16 px and cropped to its ink is 2-3 px wide (docs/benchmarks.md).
MIN_HEIGHT = 4
MIN_WIDTH = 2
MAX_ASPECT = 4.0


@contextmanager
def _no_ink_is_no_digit() -> Iterator[None]:
    """models.framing's NoInkError as the pipeline's NoDigitFound."""
    try:
        yield
    except framing.NoInkError:
        raise NoDigitFound() from None


def normalise(crop: np.ndarray) -> np.ndarray:
    """Ink cropped to it (``crop_to_ink``) -> MNIST's 28x28 (``models.framing.normalise``);
    NoDigitFound when nothing is left."""
    with _no_ink_is_no_digit():
        return framing.normalise(crop)


def digit_shaped(crop: np.ndarray) -> bool:
    """Whether ink cropped to it (``crop_to_ink``) is tall and narrow enough to be a digit."""
    h, w = crop.shape
    return h >= MIN_HEIGHT and w <= MAX_ASPECT * h


def check_picture(size: tuple[int, int]) -> None:
    """NoDigitFound for a picture (width, height) under MIN_HEIGHT pixels tall or MIN_WIDTH
    wide."""
    if size[0] < MIN_WIDTH or size[1] < MIN_HEIGHT:
        raise NoDigitFound()


def crop_to_ink(ink: np.ndarray) -> np.ndarray:
    """The part of ``ink`` (a view) between its first and last rows and columns of ink;
    NoDigitFound when there is none."""
    with _no_ink_is_no_digit():
        return framing.crop_to_ink(ink)


def is_mnist_format(gray: np.ndarray) -> bool:
    """Whether decoded grey levels are already in MNIST's format (``to_mnist`` returns them as
    they are).

    MNIST's format, checked as the pipeline's own stages would see it, so that they would
    change nothing but the ink's scale: 28x28; light ink on paper exactly black all around it
    (the border band the paper stage reads, and most of the picture); strokes reaching white
    (at least a tenth of the ink at MNIST_INK or more: the 90th percentile the ink stage would
    stretch to 1); the digit's long side the 20-pixel box (``fit`` leaves it alone), its
    strokes of a width ``models.framing`` leaves alone, its mass where ``normalise`` would
    centre it. Specks are left where they are. Tight crops, inverted polarity, faint, small,
    big or off-centre digits all fail one of these and take the full pipeline.
    """
    if gray.shape != (SIDE, SIDE):
        return False
    flat = gray.reshape(-1)
    inked = np.count_nonzero(flat)
    if not inked or 2 * inked >= flat.size or flat[arrays.border_index(SIDE, SIDE)].any():
        return False  # blank (the pipeline says so), inverted, or ink on the border
    row_sums, col_sums = gray.sum(axis=1), gray.sum(axis=0)
    rows, cols = row_sums.nonzero()[0], col_sums.nonzero()[0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    h, w = bottom - top, right - left
    if max(h, w) != BOX:
        return False
    crop = gray[top:bottom, left:right]
    if framing.stroke_change(crop) is not None:
        return False
    if 10 * np.count_nonzero(crop >= MNIST_INK) < np.count_nonzero(crop > 0.01):
        return False  # 0.01: extract_ink's threshold on a noiseless paper
    xs, ys = arrays.ramps(SIDE, SIDE)
    total = float(row_sums.sum())
    cy, cx = float(row_sums @ ys) / total - top, float(col_sums @ xs) / total - left
    return (min(max(round(CENTRE - cy), 0), SIDE - h),
            min(max(round(CENTRE - cx), 0), SIDE - w)) == (top, left)


