"""Stages 2-3 of ``to_mnist``: transparency onto paper, the paper fitted (a plane, to the border
or to a sheet in a photo), and the ink as what stands out of it, either polarity, in [0, 1].
The whole pipeline: docs/serving.md."""

from __future__ import annotations

import functools

import numpy as np

from models import arrays
from server.imaging.errors import NoDigitFound

# Residual noise (sigma, in grey levels / 255) of a paper fit beyond which the sample holds
# ink: phone and scanner noise stays below ~10 levels.
NOISY = 0.06
# A clean picture's flat paper (``_flat_paper``): within FLAT (5 grey levels) of its darkest
# or lightest level, which lies within EXTREME of black or white (a sheet, a board; a flat
# mid-grey is a table or a wall in a photo, and choosing by it answered more photos).
FLAT = 0.02
EXTREME = 0.2
# A fat digit filling its picture is not a sheet (``_fat_digit``): its region, counters
# filled, leaves more than CONCAVE of its area out of its rows' and columns' spans (a sheet
# is convex); what is inside it is within SAME_PAPER of the border's grey level (its counters
# show the paper around it); and that is broader than a pen's stroke, wider than COUNTER of
# the map's short side. Each measured on sheets, a thumb over one and fat 6s, 8s and 9s:
# docs/benchmarks.md ("Narrow pictures and fat digits").
CONCAVE = 0.01
SAME_PAPER = 0.05
COUNTER = 0.065


def composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
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


def extract_ink(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ink strength in [0, 1], 0 on paper, whatever the polarity; and whether it is framed."""
    paper, dark = _find_paper(gray)
    framed = dark is not None
    plane, sigma = _paper_plane(gray, paper)
    if sigma > NOISY and not framed:
        plane, sigma = _paper_beyond_ink(gray, plane, sigma)
    # a new array (the plane's when there is one): the steps below work in place
    ink = gray - plane if isinstance(plane, float) else np.subtract(gray, plane, out=plane)
    # noise threshold: a few sigmas of the paper's residual noise, never below ~3 grey levels
    threshold = max(4.0 * sigma, 0.01)
    if dark is None:  # not a sheet (on one, _find_paper decided from the writing)
        dark = _darker_ink(ink, threshold)
    if dark:
        np.negative(ink, out=ink)
    return _scale_ink(ink, threshold), framed


def _find_paper(gray: np.ndarray) -> tuple[np.ndarray, bool | None]:
    """Flat indices of pixels that show bare paper; and when the paper is a sheet framed by
    something else, whether the writing on it is darker than the sheet (None: not a sheet).

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
        return border, None  # both medians are that level (a clean scan, a canvas, MNIST)
    level, around = arrays.median(small.reshape(-1)), arrays.median(edge)
    if abs(around - level) > 0.1:
        near = np.abs(small - level) < 0.1
        # a sheet is a broad region; a fat digit filling a tight crop, a ring around its
        # counter, is narrower: 0.24 lies between the two (docs/benchmarks.md)
        if near.mean() > 0.5 and arrays.stroke_width(near) > 0.24 * min(small.shape):
            labels, _ = arrays.label(~near)
            edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            inside = (labels > 0) & ~np.isin(labels, edge)  # 0: the region itself
            if np.count_nonzero(inside) > 0.005 * small.size:
                writing = arrays.median(small[inside])
                if not _fat_digit(near, inside, abs(writing - around)):
                    # the polarity is the writing's against the sheet, whatever the table's
                    return np.flatnonzero(np.abs(gray - level) < 0.1), writing < level
    return border, None


def _fat_digit(near: np.ndarray, inside: np.ndarray, contrast: float) -> bool:
    """Whether a broad region of one grey level (``near``) with something ``inside`` it, of a
    grey level ``contrast`` away from the picture's border, is a fat digit, its counters
    inside, rather than a sheet with writing on it.

    A sheet is convex (a rectangle, turned, in perspective); its writing is strokes, and the
    sheet's ink, whose level is the table's only by chance. A fat digit that fills its
    picture is not convex (the opening of a 6 or a 9, the waist of an 8), and its counters
    are broad and show the paper around it. Taken for a sheet, that paper was read as the
    ink: a fat 8 came out as two dots (docs/benchmarks.md).
    """
    if contrast >= SAME_PAPER or arrays.stroke_width(inside) <= COUNTER * min(near.shape):
        return False
    region = near | inside
    # the region with every row and every column filled between its first and last pixel:
    # what that adds is its concavity
    filled = _row_spans(region) | _row_spans(region.T).T
    return np.count_nonzero(filled & ~region) > CONCAVE * np.count_nonzero(region)


def _row_spans(mask: np.ndarray) -> np.ndarray:
    """``mask`` with each row filled from its first set pixel to its last."""
    w = mask.shape[1]
    first, last = mask.argmax(axis=1), w - 1 - mask[:, ::-1].argmax(axis=1)
    xs = np.arange(w)
    return (xs >= first[:, None]) & (xs <= last[:, None]) & mask.any(axis=1)[:, None]


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
    xs, ys = arrays.ramps(h, w)
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


def _paper_beyond_ink(gray: np.ndarray, plane, sigma: float) -> tuple[np.ndarray | float, float]:
    """The paper level and noise when the border fit is too rough to be paper alone.

    Ink along the border (a tight crop, the blurry enlargement of a small scan) makes the fit's
    residual ink, not noise. Neighbouring pixels then tell the real noise; the flat paper of a
    clean picture (``_flat_paper``), else the fit, tells on which side of the paper the ink
    lies, and the paper is the far end of the grey levels on the other side (a few percent of
    the picture are enough).
    """
    if min(gray.shape) < 2:
        return plane, sigma
    step = max(1, round(np.sqrt(gray.size / 4000)))
    sample = gray[::step]
    noise = 1.4826 / np.sqrt(2) * arrays.median(np.abs(np.diff(sample, axis=1)).reshape(-1))
    if noise >= sigma / 2:
        return plane, sigma  # noisy paper after all
    values = sample[:, ::step].reshape(-1)
    flat = _flat_paper(values)
    dark = _darker_ink(gray - (plane if flat is None else flat), max(4.0 * noise, 0.01))
    return arrays.percentile(values, 95 if dark else 5), noise


def _flat_paper(values: np.ndarray) -> float | None:
    """The paper's grey level when a clean picture's paper is flat, from ``values`` (a sample
    of it): an extreme level within EXTREME of white or black that a fifth of the picture, and
    twice as much as the other extreme, sits at (a scan's or a drawing's paper, a board);
    None when there is none.

    With ink along much of the border (a tight crop of a small scan) the plane fitted to the
    border runs between the ink's level and the paper's, and the paper, the larger part, read
    as ink (docs/benchmarks.md): a digit covers less of its picture than its paper does.
    """
    low, high = float(values.min()), float(values.max())
    at_low = np.count_nonzero(values <= low + FLAT) / values.size if low <= EXTREME else 0.0
    at_high = np.count_nonzero(values >= high - FLAT) / values.size if high >= 1 - EXTREME else 0.0
    if max(at_low, at_high) >= 0.2 and max(at_low, at_high) >= 2 * min(at_low, at_high):
        return low if at_low > at_high else high
    return None


def _darker_ink(deviation: np.ndarray, threshold: float) -> bool:
    """Whether the ink is darker than the paper: more of the smoothed deviation lies beyond the
    threshold below the paper than above it."""
    if float(deviation.min()) >= -threshold:
        return False  # nothing below: skip the smoothing (a mean of values >= -t is >= -t)
    smooth = arrays.box3(deviation)
    # brighter - darker = sum(clip(s - t, 0)) - sum(clip(-s - t, 0)) = sum(s - clip(s, -t, t))
    excess = np.maximum(smooth, -threshold)  # np.clip, without its Python layers
    np.minimum(excess, threshold, out=excess)
    np.subtract(smooth, excess, out=excess)
    return float(excess.sum()) < 0


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
