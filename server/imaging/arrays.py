"""Generic array primitives of the pipeline: statistics, filters, morphology, labelling.

numpy only, on 2-D arrays; each one's cost is linear in the pixels it is given (morphology:
times its radius, which callers bound).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["block_max", "border_index", "box3", "components", "dilate", "label", "median",
           "morph", "morph_step", "paint", "percentile", "runs", "stroke_width"]


def block_max(array: np.ndarray, factor: int) -> np.ndarray:
    """Max-pool factor x factor blocks (a partial block at the edge: the max of what is there).

    Elementwise maxima of strided views: numpy reduces a short axis of a reshaped array
    several times slower.
    """
    out = array[::factor].copy()
    for k in range(1, factor):
        part = array[k::factor]
        np.maximum(out[:len(part)], part, out=out[:len(part)])
    cols = out[:, ::factor].copy()
    for k in range(1, factor):
        part = out[:, k::factor]
        np.maximum(cols[:, :part.shape[1]], part, out=cols[:, :part.shape[1]])
    return cols


def median(values: np.ndarray) -> float:
    """np.median of a 1-D array, without its generic-axis overhead (this runs per upload)."""
    n = values.size
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return (float(part[k - 1]) + float(part[k])) / 2


def percentile(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) of a 1-D array (its default linear method, same arithmetic)."""
    n = values.size
    q = q / 100
    virtual = n * q + (1 + q * (1 - 1 - 1)) - 1  # numpy's virtual index for alpha = beta = 1
    if virtual >= n - 1:
        return float(values.max())
    low = max(int(np.floor(virtual)), 0)
    part = np.partition(values, (low, low + 1))
    a, b, t = part[low], part[low + 1], virtual - low
    return float(a + (b - a) * t if t < 0.5 else b - (b - a) * (1 - t))


@functools.lru_cache(maxsize=64)
def border_index(h: int, w: int) -> np.ndarray:
    """Flat indices, in row-major order, of a band along the edges of an h x w image (about 3%
    of the short side, at least 1 pixel). Cached (uploads come in a few sizes): read-only."""
    band = max(1, round(0.03 * min(h, w)))
    if 2 * band >= min(h, w):
        index = np.arange(h * w)
    else:
        sides = np.concatenate([np.arange(band), np.arange(w - band, w)])
        middle = (np.arange(band, h - band)[:, None] * w + sides).ravel()
        index = np.concatenate([np.arange(band * w), middle, np.arange((h - band) * w, h * w)])
    index.flags.writeable = False
    return index


def pad_edge(array: np.ndarray) -> np.ndarray:
    """``np.pad(array, 1, mode="edge")`` without np.pad's generic overhead."""
    h, w = array.shape
    p = np.empty((h + 2, w + 2), dtype=array.dtype)
    p[1:-1, 1:-1] = array
    p[0, 1:-1], p[-1, 1:-1] = array[0], array[-1]
    p[:, 0], p[:, -1] = p[:, 1], p[:, -2]
    return p


def box3(array: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edges replicated), as a row pass then a column pass."""
    h, w = array.shape
    p = pad_edge(array)
    rows = p[:, :-2] + p[:, 1:-1]
    rows += p[:, 2:]
    # the result goes into the padded copy, no longer needed: one big allocation fewer
    out = np.add(rows[:-2], rows[1:-1], out=p[:h, :w])
    out += rows[2:]
    out /= np.float32(9)
    return out


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The horizontal runs of a boolean mask, as start and end (exclusive) flat indices into
    the mask with one False column appended to each row (so no run crosses a row's end)."""
    h, w = mask.shape
    flat = np.zeros(h * (w + 1) + 1, dtype=bool)  # a leading False, then the padded rows
    flat[1:].reshape(h, w + 1)[:, :w] = mask
    changes = np.flatnonzero(flat[1:] != flat[:-1])  # starts and ends alternate
    return changes[0::2], changes[1::2]


def components(starts: np.ndarray, ends: np.ndarray, stride: int) -> tuple[np.ndarray, int]:
    """8-connected component of each run (0..n-1 in row-major order of appearance), and n.

    The touching pairs are found with numpy: run j touches the runs i of the row above with
    s_i <= e_j and s_j <= e_i (exclusive ends make that include diagonal contact), a
    contiguous range in the sorted runs, and one row up is ``stride`` back in flat indices.
    Only the union-find over those pairs runs in Python: callers label maps of at most
    128x128, a few thousand runs.
    """
    lo = np.searchsorted(ends, starts - stride, side="left")
    counts = np.maximum(np.searchsorted(starts, ends - stride, side="right") - lo, 0)
    below = np.repeat(np.arange(starts.size), counts)
    offsets = np.arange(below.size) - np.repeat(np.cumsum(counts) - counts, counts)
    above = np.repeat(lo, counts) + offsets
    parent = list(range(starts.size))
    for i, j in zip(above.tolist(), below.tolist()):
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        while parent[j] != j:
            parent[j] = j = parent[parent[j]]
        if i != j:  # the smaller index stays the root: roots are first appearances
            parent[max(i, j)] = min(i, j)
    for k in range(len(parent)):  # parents have smaller indices: one pass reaches the roots
        parent[k] = parent[parent[k]]
    roots = np.array(parent, dtype=np.intp)
    is_root = roots == np.arange(roots.size)
    return (np.cumsum(is_root) - 1)[roots], int(np.count_nonzero(is_root))


def paint(values: np.ndarray, starts: np.ndarray, ends: np.ndarray,
          shape: tuple[int, int]) -> np.ndarray:
    """An image of ``shape`` with every run set to its value (0 elsewhere), values' dtype."""
    h, w = shape
    steps = np.zeros(h * (w + 1), dtype=values.dtype)
    steps[starts] = values
    steps[ends] = -values  # the padding column: an end is always inside
    return np.cumsum(steps, dtype=values.dtype).reshape(h, w + 1)[:, :w]


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (1..n in row-major order of appearance, 0 = background)
    and n."""
    mask = np.asarray(mask, dtype=bool)
    starts, ends = runs(mask)
    ids, n = components(starts, ends, mask.shape[1] + 1)
    return np.ascontiguousarray(paint(ids.astype(np.int32) + 1, starts, ends, mask.shape)), n


def dilate(mask: np.ndarray) -> np.ndarray:
    """Binary 3x3 dilation, as a row pass then a column pass."""
    rows = mask.copy()
    rows[:, 1:] |= mask[:, :-1]
    rows[:, :-1] |= mask[:, 1:]
    out = rows.copy()
    out[1:] |= rows[:-1]
    out[:-1] |= rows[1:]
    return out


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask, 2 * area / perimeter (a long stroke: 2wL / 2L).

    Only edges inside the mask count: pad it to count the frame as a border too.
    """
    area = np.count_nonzero(mask)
    perimeter = (np.count_nonzero(mask[:, 1:] != mask[:, :-1])
                 + np.count_nonzero(mask[1:, :] != mask[:-1, :]))
    return 2 * area / max(perimeter, 1.0)


def morph_step(image: np.ndarray, step: int, op) -> np.ndarray:
    """One pass of ``morph``: a 3x3 square on even steps, a cross on odd ones."""
    p = pad_edge(image)
    h, w = image.shape
    out = image.copy()
    for dy, dx in ((0, 1), (1, 0), (1, 2), (2, 1)):
        out = op(out, p[dy:dy + h, dx:dx + w])
    if step % 2 == 0:
        for dy, dx in ((0, 0), (0, 2), (2, 0), (2, 2)):
            out = op(out, p[dy:dy + h, dx:dx + w])
    return out


def morph(image: np.ndarray, radius: int, op) -> np.ndarray:
    """Grey dilation (op=np.maximum) or erosion (np.minimum) by a roughly round disc.

    Alternating 3x3 squares and crosses approximates a disc (an octagon) for any radius; the
    cost is radius x pixels, so callers bound both.
    """
    for step in range(radius):
        image = morph_step(image, step, op)
    return image
