"""The paper / ink / normalise pipeline: decoded grey levels -> MNIST-like 28x28 digits.

MNIST digits are light ink on black, size-normalised into a 20x20 box (aspect ratio kept,
anti-aliased) and translated so that their centre of mass is at pixel (14, 14), 0-based.
``to_mnist`` brings photos, scans and canvas drawings to that form:

1. decode (``decode``: limits checked before any pixel, reduced to at most WORK_SIZE a side);
2. composite transparency onto paper;
3. model the paper as a plane fitted to the border pixels (photos have lighting gradients) or,
   for a photo of a sheet lying on a table, to the sheet; decide the polarity from which side
   of the paper the strong deviations lie, and turn the image into "ink": bright on 0, with
   noise below a threshold derived from the paper's own noise set to 0;
4. find the digit as the large connected components of ink, dropping specks (and, around a
   sheet, whatever touches the picture's edge);
5. crop to its bounding box; bring pen-thin or marker-thick strokes into MNIST's range of
   stroke widths (grey dilation or erosion on a copy no bigger than the 28x28 output needs);
6. resize the long side to 20 pixels (area-averaged), and place it in 28x28 with an integer
   shift so the centre of mass falls on pixel (14, 14).

In pictures of at least 2 * HALF_SIZE a side, stages 3-5 run at half resolution first (a
JPEG is then decoded straight at that scale, ``decode_half``), and the digit found there is
kept when it spans at least MIN_SPAN pixels; smaller ones are looked for again at full
resolution. An upload already in MNIST's own format (28x28, light ink on black, size and
centre as MNIST's, ``_as_mnist``) comes back unchanged, without going through the stages.

Every stage after decoding works on at most WORK_SIZE^2 pixels (the half-resolution attempt
adds a quarter of that), and the stroke stage on at most STROKE_SIZE a side with a radius
bounded by it: the cost per upload is bounded by construction. Pure and thread-safe.
"""
from __future__ import annotations

import functools
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from server.imaging import arrays
from server.imaging.decode import decode, decode_half
from server.imaging.errors import NoDigitFound

# Longest side of the map the connected components are labelled on (their union-find is Python).
COARSE_SIZE = 128
BOX = 20  # MNIST's size-normalisation box
SIDE = 28
CENTRE = 14.0  # MNIST's mean centre of mass is (13.99, 14.01), 0-based, not 13.5
# MNIST's stroke width (stroke_width() of pixels > 0.5, in pixels of the 20-pixel box) is
# 1.35 / 1.83 / 2.56 at the 10th / 50th / 90th percentile of the test set. Pen lines thinner
# than THIN are thickened to TARGET; marker lines beyond THICK are thinned towards THINNED
# (2.7 and 2.0 rather than 3.0 and 2.4: +4 points on bench/uploads.py's thick-marker case
# with the CNN, the same elsewhere).
THIN, TARGET, THICK, THINNED = 1.5, 2.0, 2.7, 2.0
# Longest side strokes are normalised at: 4x the 20-pixel box keeps their shape, and bounds
# the morphology's cost (radius <= STROKE_SIZE / 2 passes over STROKE_SIZE^2 pixels).
STROKE_SIZE = 80
# The digit is looked for at half resolution first in pictures of at least 2 * HALF_SIZE a
# side (JPEGs decoded straight at that scale by libjpeg), and found there when it spans at
# least MIN_SPAN pixels: 1.6 times the 20-pixel box, still more than one pixel per pixel of
# the box after area averaging. Smaller digits are looked for again at full resolution
# (WORK_SIZE). A quarter of the pixels go through the paper, ink and pieces stages: ~2x
# cheaper on a 400x300 photo, the same accuracy on bench/uploads.py.
HALF_SIZE = 80
MIN_SPAN = 32
# An upload already in MNIST's format is returned as it is when a tenth of its ink is at least
# this bright (the 90th percentile of the ink, which the pipeline would scale to 1; that of
# MNIST's test digits is 0.97 or more for 99% of them): the pipeline's scaling would change
# it by less than 0.05.
MNIST_INK = 0.95
# Residual noise (sigma, in grey levels / 255) of a paper fit beyond which the sample holds
# ink: phone and scanner noise stays below ~10 levels.
NOISY = 0.06


def to_mnist(data: bytes, *, max_pixels: int = 40_000_000) -> np.ndarray:
    """Encoded image bytes -> float32 (28, 28) in [0, 1], ink bright on black like MNIST / 255.

    Raises InvalidImage, UnsupportedFormat, ImageTooLarge (more than ``max_pixels`` declared
    pixels, or more decoding work than such an image needs) or NoDigitFound, all ImageErrors.
    """
    half = decode_half(data, max_pixels, HALF_SIZE)  # a JPEG libjpeg decodes smaller for us
    crop = None if half is None else _digit_if_big(half)
    if crop is None:
        gray, alpha, _ = decode(data, max_pixels)
        if alpha is None and gray.shape == (SIDE, SIDE):
            image = _as_mnist(gray)
            if image is not None:
                return image
        if alpha is not None:
            gray = _composite(gray, alpha)
        if half is None and max(gray.shape) >= 2 * HALF_SIZE:
            crop = _digit_if_big(arrays.halve(gray))
        if crop is None:
            crop = _crop(keep_digit(*_extract_ink(gray)))
    return _normalise_crop(crop)


def _digit_if_big(half: np.ndarray) -> np.ndarray | None:
    """The digit's ink cropped to it, found in a picture at half resolution, if it spans at
    least MIN_SPAN pixels there; None when it is smaller (or too thin or faint to survive the
    halving): then it is looked for at full resolution."""
    try:
        crop = _crop(keep_digit(*_extract_ink(half)))
    except NoDigitFound:
        return None
    return crop if max(crop.shape) >= MIN_SPAN else None


def _as_mnist(gray: np.ndarray) -> np.ndarray | None:
    """``gray`` itself if it is already in MNIST's format, None otherwise.

    MNIST's format, checked as the pipeline's own stages would see it, so that they would
    change nothing but the ink's scale: light ink on paper exactly black all around it (the
    border band ``_find_paper`` reads, and most of the picture); strokes reaching white (at
    least a tenth of the ink at MNIST_INK or more: the 90th percentile ``_scale_ink`` would
    stretch to 1); the digit's long side the 20-pixel box (``_fit`` leaves it alone), its
    strokes of a width ``_normalise_stroke`` leaves alone, its mass where ``normalise`` would
    centre it. Specks are left where they are. Tight crops, inverted polarity, faint, small,
    big or off-centre digits all fail one of these and take the full pipeline.
    """
    flat = gray.reshape(-1)
    if flat[arrays.border_index(SIDE, SIDE)].any() or 2 * np.count_nonzero(flat) >= flat.size:
        return None
    row_sums, col_sums = gray.sum(axis=1), gray.sum(axis=0)
    rows, cols = row_sums.nonzero()[0], col_sums.nonzero()[0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    h, w = bottom - top, right - left
    if max(h, w) != BOX:
        return None
    crop = gray[top:bottom, left:right]
    if _stroke_change(crop) is not None:
        return None
    if 10 * np.count_nonzero(crop >= MNIST_INK) < np.count_nonzero(crop > 0.01):
        return None  # 0.01: _extract_ink's threshold on a noiseless paper
    xs, ys = _ramps(SIDE, SIDE)
    total = float(row_sums.sum())
    cy, cx = float(row_sums @ ys) / total - top, float(col_sums @ xs) / total - left
    if (min(max(round(CENTRE - cy), 0), SIDE - h), min(max(round(CENTRE - cx), 0), SIDE - w)) != (
            top, left):
        return None
    return gray


def ink_map(data: bytes, max_pixels: int) -> tuple[np.ndarray, bool, float]:
    """Decoded ink strength in [0, 1] (0 on paper), whether the paper is a framed sheet, and
    the size of one of its pixels in pixels of the upright original."""
    gray, alpha, (width, height) = decode(data, max_pixels)
    if alpha is not None:
        gray = _composite(gray, alpha)
    ink, framed = _extract_ink(gray)
    return ink, framed, max(width / gray.shape[1], height / gray.shape[0])


def to_png(image28: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a (28, 28) image in [0, 1] (what the model saw, for debugging)."""
    image = np.asarray(image28, dtype=np.float64)
    if image.shape != (SIDE, SIDE):
        raise ValueError(f"to_png expects a ({SIDE}, {SIDE}) array, got shape {image.shape}")
    pixels = np.clip(np.rint(np.nan_to_num(image) * 255.0), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten transparency onto paper.

    Transparent means paper. With a mostly opaque border the image has its own paper and is
    flattened onto white. With a transparent border there are two cases: a canvas drawing,
    whose opaque pixels are all one colour (the strokes), goes onto the opposite colour, so
    white strokes survive as well as black ones; an opaque sheet with a digit on it goes onto
    the sheet's own colour (the median of the opaque pixels), so only the digit stands out.
    """
    if np.mean(alpha.reshape(-1)[arrays.border_index(*alpha.shape)] < 0.5) <= 0.5:
        paper = 1.0
    else:
        weight = float(alpha.sum())
        if weight <= 0:
            return np.ones_like(gray)  # fully transparent: blank paper
        mean = float((gray * alpha).sum()) / weight
        spread = np.sqrt(float((alpha * (gray - mean) ** 2).sum()) / weight)
        if spread < 0.15:
            paper = 1.0 if mean < 0.5 else 0.0
        else:
            opaque = gray[alpha >= 0.5]
            paper = float(np.median(opaque)) if opaque.size else 1.0
    return gray * alpha + np.float32(paper) * (1 - alpha)






def _design(sample: np.ndarray, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """A thousand of the flat indices ``sample`` (a thousand samples pin a plane down well
    enough), and their plane-fit terms 1, x/w, y/h as rows (float64)."""
    sample = sample[::max(1, sample.size // 1000)]
    ys, xs = np.divmod(sample, w)
    design = np.empty((3, sample.size))
    design[0] = 1
    np.divide(xs, max(w, 1), out=design[1])
    np.divide(ys, max(h, 1), out=design[2])
    return sample, design


@functools.lru_cache(maxsize=64)
def _border_design(h: int, w: int) -> tuple[np.ndarray, np.ndarray, list]:
    """``_design`` of the border band (uploads come in a few sizes), and its terms' products
    (design @ design.T, as lists): read-only."""
    sample, design = _design(arrays.border_index(h, w), h, w)
    sample.flags.writeable = design.flags.writeable = False
    return sample, design, (design @ design.T).tolist()


def _paper_plane(gray: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray | float, float]:
    """The paper's grey level as a plane a + b*x + c*y fitted to the pixels at the flat indices
    ``sample``, and the noise sigma of the fit. A flat sample gives its level itself.

    Two passes: the second drops sample pixels far from the first fit (ink touching the edge);
    when the first drops none, the second would fit the same pixels again and is skipped.
    Least squares through the normal equations: the columns 1, x/w, y/h are well conditioned.
    Medians in float32, which numpy partitions much faster.
    """
    h, w = gray.shape
    if sample is arrays.border_index(h, w):  # the usual sample: its terms are cached
        sample, design, products = _border_design(h, w)
    else:
        sample, design = _design(sample, h, w)
        products = None
    values = gray.reshape(-1)[sample]
    low = values.min()
    if low == values.max():  # what the fit below would give, up to rounding
        return float(low), 0.0
    keep = None  # all of them, in the first pass
    for _ in range(2):
        kept_design = design if keep is None else design * keep
        if keep is not None or products is None:
            products = (kept_design @ design.T).tolist()
        coef = _solve3([row + [dot] for row, dot in zip(products, kept_design @ values)])
        if coef is None:  # singular: one row or one column of samples
            rows = np.s_[:] if keep is None else keep
            coef = np.linalg.lstsq(design[:, rows].T, values[rows], rcond=None)[0].tolist()
        residual = (values - np.array(coef) @ design).astype(np.float32)
        kept = residual if keep is None else residual[keep]
        spread = np.abs(kept - arrays.median(kept))
        limit = max(3.0 * 1.4826 * arrays.median(spread), 0.02)
        np.abs(residual, out=residual)
        keep = residual <= limit
        kept_count = np.count_nonzero(keep)
        if kept_count < 3 or kept_count == keep.size:  # a second pass would change nothing
            break
    # residual holds |residual| now
    if kept_count == 0:
        sigma = 0.0
    else:
        sigma = 1.4826 * arrays.median(residual if kept_count == keep.size else residual[keep])
    xs, ys = _ramps(h, w)
    xs = (coef[1] / max(w, 1) * xs).astype(np.float32)
    ys = (coef[0] + coef[2] / max(h, 1) * ys).astype(np.float32)
    return ys[:, None] + xs[None, :], sigma


def _solve3(system: list) -> list | None:
    """The solution c of A @ c = b, given as the rows of [A | b] (3 lists of 4 floats, used
    up), by Gaussian elimination with partial pivoting as LAPACK's solve does; None when
    singular. In Python floats: numpy's solve costs more in checks than this in arithmetic."""
    a, b, c = system
    if abs(b[0]) > abs(a[0]):
        a, b = b, a
    if abs(c[0]) > abs(a[0]):
        a, c = c, a
    if a[0] == 0:
        return None
    for row in (b, c):
        f = row[0] / a[0]
        row[1] -= f * a[1]
        row[2] -= f * a[2]
        row[3] -= f * a[3]
    if abs(c[1]) > abs(b[1]):
        b, c = c, b
    if b[1] == 0:
        return None
    f = c[1] / b[1]
    c[2] -= f * b[2]
    c[3] -= f * b[3]
    if c[2] == 0:
        return None
    z = c[3] / c[2]
    y = (b[3] - b[2] * z) / b[1]
    return [(a[3] - a[1] * y - a[2] * z) / a[0], y, z]


@functools.lru_cache(maxsize=64)
def _ramps(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """0..w-1 and 0..h-1 as float64 (read-only)."""
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def _find_paper(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Flat indices of pixels that show bare paper, and whether the paper is a sheet framed by
    something else.

    Usually the border is paper. In a photo of a sheet lying on a table the border is the
    table; then the paper is the picture's dominant grey level, one broad region with the
    digit inside it, away from the picture's edge. (A fat digit cropped tightly can also
    dominate, but then what is not "paper" is its own background, which reaches the edge.)
    """
    border = arrays.border_index(*gray.shape)
    step = max(1, max(gray.shape) // 64)
    small = gray[::step, ::step]
    edge = gray.reshape(-1)[border]
    low = edge.min()
    if low == edge.max() and 2 * np.count_nonzero(small == low) > small.size:
        return border, False  # both medians are that level (a clean scan, a canvas, MNIST)
    level = arrays.median(small.reshape(-1))
    if abs(arrays.median(edge) - level) > 0.1:
        near = np.abs(small - level) < 0.1
        # a sheet is a broad region (2 area / perimeter ~0.27 of the short side in a photo);
        # a fat digit filling a tight crop, a ring around its counter, is narrower (~0.21)
        if near.mean() > 0.5 and arrays.stroke_width(near) > 0.24 * min(small.shape):
            labels, _ = arrays.label(~near)
            edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            inside = np.count_nonzero(~np.isin(labels, edge))
            if inside > 0.005 * small.size:
                return np.flatnonzero(np.abs(gray - level) < 0.1), True
    return border, False


def _paper_beyond_ink(gray: np.ndarray, plane, sigma: float) -> tuple[np.ndarray | float, float]:
    """The paper level and noise when the border fit is too rough to be paper alone.

    Ink along the border (a tight crop, the blurry enlargement of a small scan) makes the fit's
    residual ink, not noise. Neighbouring pixels then tell the real noise; the fit still tells
    on which side of the paper the ink lies, and the paper is the far end of the grey levels
    on the other side (a few percent of the picture are enough).
    """
    if min(gray.shape) < 2:
        return plane, sigma
    step = max(1, round(np.sqrt(gray.size / 4000)))
    sample = gray[::step]
    noise = 1.4826 / np.sqrt(2) * arrays.median(np.abs(np.diff(sample, axis=1)).reshape(-1))
    if noise >= sigma / 2:
        return plane, sigma  # noisy paper after all
    values = sample[:, ::step].reshape(-1)
    dark = _darker_ink(gray - plane, max(4.0 * noise, 0.01))
    return arrays.percentile(values, 95 if dark else 5), noise


def _darker_ink(deviation: np.ndarray, threshold: float, box: tuple | None = None) -> bool:
    """Whether the ink is darker than the paper: more of the smoothed deviation lies beyond the
    threshold below the paper than above it, within ``box`` (top, bottom, left, right)."""
    h, w = deviation.shape
    top, bottom, left, right = box or (0, h, 0, w)
    if float(deviation[top:bottom, left:right].min()) >= -threshold:
        return False  # nothing below: skip the smoothing (a mean of values >= -t is >= -t)
    # smooth with one pixel of context around the box, as over the whole picture
    y0, x0 = max(top - 1, 0), max(left - 1, 0)
    smooth = arrays.box3(deviation[y0:bottom + 1, x0:right + 1])
    smooth = smooth[top - y0:bottom - y0, left - x0:right - x0]
    # brighter - darker = sum(clip(s - t, 0)) - sum(clip(-s - t, 0)) = sum(s - clip(s, -t, t))
    excess = np.maximum(smooth, -threshold)  # np.clip, without its Python layers
    np.minimum(excess, threshold, out=excess)
    np.subtract(smooth, excess, out=excess)
    return float(excess.sum()) < 0


def _extract_ink(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ink strength in [0, 1], 0 on paper, whatever the polarity; and whether it is framed."""
    paper, framed = _find_paper(gray)
    plane, sigma = _paper_plane(gray, paper)
    if sigma > NOISY and not framed:
        plane, sigma = _paper_beyond_ink(gray, plane, sigma)
    # a new array (the plane's when there is one): the steps below work in place
    ink = gray - plane if isinstance(plane, float) else np.subtract(gray, plane, out=plane)
    # noise threshold: a few sigmas of the paper's residual noise, never below ~3 grey levels
    threshold = max(4.0 * sigma, 0.01)
    box = None
    if framed:  # decide the polarity on the sheet, not on the table around it
        rows, cols = np.divmod(paper, gray.shape[1])
        box = (int(rows[0]), int(rows[-1]) + 1, int(cols.min()), int(cols.max()) + 1)
    if _darker_ink(ink, threshold, box):
        np.negative(ink, out=ink)
    return _scale_ink(ink, threshold), framed


def _scale_ink(ink: np.ndarray, threshold: float) -> np.ndarray:
    """Deviations from the paper (ink positive) -> ink strength: 0 up to ``threshold``, 1 from
    the 90th percentile of what lies beyond it. In place."""
    candidates = ink[ink > threshold]
    if candidates.size == 0:
        raise NoDigitFound()
    peak = arrays.percentile(candidates, 90)
    if peak - threshold < 0.08:  # too faint to tell from paper texture
        raise NoDigitFound()
    np.subtract(ink, threshold, out=ink)
    np.divide(ink, np.float32(peak - threshold), out=ink)
    np.maximum(ink, 0, out=ink)
    np.minimum(ink, 1, out=ink)
    return ink


# --- the digit ------------------------------------------------------------------------------










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


def _crop(ink: np.ndarray) -> np.ndarray:
    rows = ink.any(axis=1).nonzero()[0]
    cols = ink.any(axis=0).nonzero()[0]
    if rows.size == 0:
        raise NoDigitFound()
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _fit(crop: np.ndarray, long_side: int) -> np.ndarray:
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


def _stroke_change(crop: np.ndarray) -> float | None:
    """The stroke width (in pixels of the 20-pixel box) that ``_normalise_stroke`` brings into
    MNIST's range, or None when it leaves the strokes as they are."""
    mask = crop > 0.5
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
    width = _stroke_change(crop)
    if width is None:
        return crop
    # at one scale whatever the upload's: fine steps of the radius, and a bounded cost
    fitted = _fit(crop, STROKE_SIZE)
    radius = min(_radius(width, BOX / STROKE_SIZE), STROKE_SIZE // 2)
    if width < THIN:
        return _crop(arrays.morph(np.pad(fitted, radius), radius, np.maximum))
    pieces = arrays.label(fitted > 0.5)[1]
    thinned = fitted
    for step in range(radius):
        thinner = arrays.morph_step(thinned, step, np.minimum)
        # stop before a stroke breaks or vanishes: blocky, blurry enlargements of small scans
        # have thick strokes with thin joints
        if arrays.label(thinner > 0.5)[1] != pieces:
            break
        thinned = thinner
    return crop if thinned is fitted else _crop(thinned)


def normalise(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit the long side to 20 pixels, centre the mass at (14, 14) in 28x28."""
    return _normalise_crop(_crop(ink))


def _normalise_crop(crop: np.ndarray) -> np.ndarray:
    """``normalise`` of ink already cropped to it."""
    crop = _fit(_normalise_stroke(crop), BOX)
    total = float(crop.sum())
    if total <= 0:
        raise NoDigitFound()
    h, w = crop.shape
    xs, ys = _ramps(h, w)
    cy = float((crop.sum(axis=1) * ys).sum()) / total
    cx = float((crop.sum(axis=0) * xs).sum()) / total
    # integer shift: MNIST's own digits then come back unchanged (no resampling blur)
    top = min(max(round(CENTRE - cy), 0), SIDE - h)
    left = min(max(round(CENTRE - cx), 0), SIDE - w)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top:top + h, left:left + w] = crop
    return out
