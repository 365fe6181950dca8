"""A written number: the ink split into digits left to right, each normalised like to_mnist.

Digits are the groups of ink pieces whose column ranges overlap: a 5's detached flag or a
broken stroke joins the piece above or below it; touching digits stay one piece (and are
read as one digit). Pieces are labelled on the ink map itself (at most WORK_SIZE a side), not
on to_mnist's coarser map, so that narrow gaps between digits survive.
"""

from __future__ import annotations

import numpy as np

from server.imaging.decode import WORK_SIZE
from server.imaging.errors import NoDigitFound, TooManyDigits
from server.imaging.normalise import crop_to_ink, digit_shaped, normalise
from server.imaging.pieces import Blobs, blobs
from server.imaging.pipeline import ink_map

Box = tuple[int, int, int, int]
# A piece lighter than this fraction of the heaviest is a speck, not a digit or part of one.
SPECK = 0.1
# Pieces overlapping by this fraction of the narrower one's width belong to one digit.
OVERLAP = 0.5
# A group this much shorter and lighter than the largest digit is a dot or a dash, not a digit.
SMALL = 0.3


def to_mnist_digits(data: bytes, *, max_pixels: int = 40_000_000,
                    max_digits: int = 12) -> list[tuple[np.ndarray, Box]]:
    """Encoded image bytes -> one (float32 (28, 28) image, (x, y, w, h) box in the original
    image's pixels) per digit, left to right.

    Raises like ``to_mnist``, and TooManyDigits when more than ``max_digits`` are found.
    """
    ink, framed, scale = ink_map(data, max_pixels)
    pieces = blobs(ink, framed, coarse_size=WORK_SIZE)
    found = []
    for keep in _groups(pieces):
        digit = ink * pieces.mask(keep, ink.shape)
        rows = np.flatnonzero(digit.any(axis=1))
        cols = np.flatnonzero(digit.any(axis=0))
        if rows.size:
            found.append((digit, (int(cols[0]), int(rows[0]), int(cols[-1]) + 1,
                                  int(rows[-1]) + 1), float(pieces.mass[keep].sum())))
    if not found:
        raise NoDigitFound()
    tallest = max(bottom - top for _, (_, top, _, bottom), _ in found)
    heaviest = max(mass for *_, mass in found)
    found = [(crop_to_ink(digit), box) for digit, box, mass in found
             if box[3] - box[1] >= SMALL * tallest or mass >= SMALL * heaviest]
    found = [(crop, box) for crop, box in found if digit_shaped(crop)]  # no dashes or specks
    if not found:
        raise NoDigitFound()
    if len(found) > max_digits:
        raise TooManyDigits(len(found), max_digits)
    return [(normalise(crop), _original_box(box, scale)) for crop, box in found]


def _original_box(box: tuple[int, int, int, int], scale: float) -> Box:
    """(left, top, right, bottom) on the ink map -> (x, y, w, h) in the original's pixels."""
    left, top, right, bottom = box
    x, y = int(left * scale), int(top * scale)
    return x, y, int(np.ceil(right * scale)) - x, int(np.ceil(bottom * scale)) - y


def _groups(pieces: Blobs) -> list[np.ndarray]:
    """Boolean masks over the pieces, one per digit, left to right."""
    significant = np.flatnonzero(pieces.mass >= SPECK * pieces.mass.max())
    x0, x1 = pieces.columns()
    members: list[list[int]] = []
    spans: list[tuple[int, int]] = []
    for i in significant[np.argsort(x0[significant], kind="stable")]:
        if spans:
            lo, hi = spans[-1]
            overlap = min(hi, x1[i]) - max(lo, x0[i]) + 1
            if overlap >= OVERLAP * min(hi - lo + 1, x1[i] - x0[i] + 1):
                members[-1].append(i)
                spans[-1] = (lo, max(hi, int(x1[i])))
                continue
        members.append([i])
        spans.append((int(x0[i]), int(x1[i])))
    masks = []
    for group in members:
        keep = np.zeros(pieces.n, dtype=bool)
        keep[group] = True
        masks.append(keep)
    return masks
