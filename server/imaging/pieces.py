"""Stage 4 of ``to_mnist``: the ink's connected pieces, and the digit kept among them (specks,
dust and, around a sheet, the table dropped). The whole pipeline: docs/serving.md."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from server.imaging import arrays
from server.imaging.errors import NoDigitFound

# Longest side of the map the connected components are labelled on (their union-find is Python).
COARSE_SIZE = 128


@dataclass
class Blobs:
    """The connected pieces of ink, labelled on a max-pooled map of at most COARSE_SIZE a side:
    ``ids`` gives each run's piece (0..n-1), ``mass`` each piece's summed ink."""

    factor: int
    shape: tuple[int, int]
    starts: np.ndarray
    ends: np.ndarray
    ids: np.ndarray
    n: int
    mass: np.ndarray
    coarse: np.ndarray  # the whole ink mask on the coarse map

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """Each piece's first and last column on the coarse map."""
        w = self.shape[1]
        first = self.starts % (w + 1)
        return self._extent(first, self.ends - self.starts + first - 1)

    def rows(self) -> tuple[np.ndarray, np.ndarray]:
        """Each piece's first and last row on the coarse map."""
        row = self.starts // (self.shape[1] + 1)
        return self._extent(row, row)

    def _extent(self, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lo = np.full(self.n, np.iinfo(np.intp).max, dtype=np.intp)
        hi = np.zeros(self.n, dtype=np.intp)
        np.minimum.at(lo, self.ids, low)
        np.maximum.at(hi, self.ids, high)
        return lo, hi

    def mask(self, keep: np.ndarray | None, full: tuple[int, int]) -> np.ndarray:
        """The pieces where ``keep`` is true (all: None), with one coarse pixel of margin, at
        ``full`` size."""
        return self._upscale(self._kept(keep), full)

    def crop(self, ink: np.ndarray, keep: np.ndarray | None) -> np.ndarray:
        """``ink`` times ``mask(keep, ink.shape)``, in place, cut to the rows and columns where
        that mask is set (a view): outside them nothing is left to crop to."""
        whole = keep is None or keep.all()
        starts, ends = (self.starts, self.ends) if whole else (
            self.starts[keep[self.ids]], self.ends[keep[self.ids]])
        if starts.size == 0:
            raise NoDigitFound()
        # the kept runs' box (runs are in row-major order), with the mask's pixel of margin
        h, w = self.shape
        stride = w + 1
        y0, y1 = max(int(starts[0]) // stride - 1, 0), min(int(starts[-1]) // stride + 2, h)
        x0 = max(int((starts % stride).min()) - 1, 0)
        x1 = min(int(((ends - 1) % stride).max()) + 2, w)
        kept = self.coarse if whole else arrays.paint(
            keep[self.ids].view(np.int8), self.starts, self.ends, self.shape) != 0
        # nothing is kept next to the box: dilating its part is dilating the whole and cutting
        kept = arrays.dilate(kept[y0:y1, x0:x1])
        f = self.factor
        region = ink[y0 * f:y1 * f, x0 * f:x1 * f]
        np.multiply(region, self._upscale(kept, region.shape), out=region)
        return region

    def _kept(self, keep: np.ndarray | None) -> np.ndarray:
        """The kept pieces on the coarse map, with one pixel of margin."""
        if keep is None or keep.all():
            kept = self.coarse
        else:
            kept = arrays.paint(keep[self.ids].view(np.int8), self.starts, self.ends,
                                self.shape) != 0
        # one pixel of margin keeps the faint anti-aliased rim around the kept strokes
        return arrays.dilate(kept)

    def _upscale(self, kept: np.ndarray, full: tuple[int, int]) -> np.ndarray:
        if self.factor > 1:
            kept = np.repeat(np.repeat(kept, self.factor, axis=0), self.factor, axis=1)
        return kept[:full[0], :full[1]]


def blobs(ink: np.ndarray, framed: bool = False, coarse_size: int = COARSE_SIZE) -> Blobs:
    """The pieces of ink, on a map of at most ``coarse_size`` a side; ``framed``: the paper is
    a sheet inside the picture, and what touches the picture's edge is the table around it
    (mass 0 when something is inside)."""
    factor = max(1, -(-max(ink.shape) // coarse_size))
    # max-pooling keeps thin strokes connected on the coarse map
    coarse = arrays.block_max(ink, factor) if factor > 1 else ink
    h, w = coarse.shape
    mask = coarse > 0.05
    starts, ends = arrays.runs(mask)
    if starts.size == 0:
        raise NoDigitFound()
    ids, n = arrays.components(starts, ends, w + 1)
    if n == 1:  # the usual upload: its mass is of no use
        return Blobs(factor, (h, w), starts, ends, ids, n, np.ones(1), mask)
    padded = np.zeros((h, w + 1))  # float64 sums, laid out like the runs' indices
    padded[:, :w] = coarse
    bounds = np.stack([starts, ends], 1).reshape(-1)
    mass = np.bincount(ids, weights=np.add.reduceat(padded.reshape(-1), bounds)[::2],
                       minlength=n)
    if framed:
        rows, first = np.divmod(starts, w + 1)
        touching = (rows == 0) | (rows == h - 1) | (first == 0) | (ends - rows * (w + 1) == w)
        edge = np.unique(ids[touching])
        if edge.size < n:  # something is left inside
            mass[edge] = 0
    return Blobs(factor, (h, w), starts, ends, ids, n, mass, mask)


def keep_digit(ink: np.ndarray, framed: bool = False) -> np.ndarray:
    """Zero every ink piece much lighter than the largest (specks, dust, JPEG debris), in place
    on ``ink``; return the part of it where the digit lies (a view)."""
    pieces = blobs(ink, framed)
    keep = None if pieces.n == 1 else pieces.mass >= 0.1 * pieces.mass.max()
    if keep is not None and not keep.all():
        # light pieces within the digit's box are its own strokes broken at the threshold (a
        # pen-thin 4's diagonal), not specks: they stay (cropping is unchanged by them)
        (x0, x1), (y0, y1) = pieces.columns(), pieces.rows()
        inside = ((x0 >= x0[keep].min()) & (x1 <= x1[keep].max())
                  & (y0 >= y0[keep].min()) & (y1 <= y1[keep].max()))
        keep |= inside & (pieces.mass > 0)
    return pieces.crop(ink, keep)
