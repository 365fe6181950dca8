"""Generic array primitives of the pipeline: statistics, filters, morphology, labelling.

numpy only, on 2-D arrays; each one's cost is linear in the pixels it is given (morphology:
times its radius, which callers bound).
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["FEW_RUNS", "block_max", "border_index", "box3", "components", "dilate", "halve",
           "label", "median", "morph", "morph_step", "paint", "percentile", "ramps", "runs",
           "stroke_width"]


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


def halve(array: np.ndarray) -> np.ndarray:
    """Mean of 2x2 blocks (a partial block at an odd edge: the mean of what is there, as
    Pillow's reduce does)."""
    h, w = array.shape
    if h % 2 or w % 2:  # repeat the last row or column: its half blocks then average right
        array = np.pad(array, ((0, h % 2), (0, w % 2)), mode="edge")
    pairs = (array[0::2] + array[1::2]).reshape(-1)  # rows added: pairs along each row
    out = pairs[0::2] + pairs[1::2]
    out *= np.float32(0.25)
    return out.reshape(-(-h // 2), -(-w // 2))


def median(values: np.ndarray) -> float:
    """np.median of a 1-D array, without its generic-axis overhead (this runs per upload)."""
    n = values.size
    k = n // 2
    part = values.copy()
    part.partition(k)
    if n % 2:
        return float(part[k])
    # the other middle value is the largest below k: numpy partitions around one index several
    # times faster than around two (a SIMD select)
    return (float(part[:k].max()) + float(part[k])) / 2


def percentile(values: np.ndarray, q: float) -> float:
    """np.percentile(values, q) of a 1-D array (its default linear method, same arithmetic)."""
    n = values.size
    q = q / 100
    virtual = n * q + (1 + q * (1 - 1 - 1)) - 1  # numpy's virtual index for alpha = beta = 1
    if virtual >= n - 1:
        return float(values.max())
    low = max(int(np.floor(virtual)), 0)
    part = values.copy()
    part.partition(low + 1)  # one index, as in median(); part[low] is the largest below it
    a, b, t = part[:low + 1].max(), part[low + 1], virtual - low
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


@functools.lru_cache(maxsize=64)
def ramps(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """0..w-1 and 0..h-1 as float64 (read-only)."""
    xs, ys = np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64)
    xs.flags.writeable = ys.flags.writeable = False
    return xs, ys


def pad_edge(array: np.ndarray) -> np.ndarray:
    """``np.pad(array, 1, mode="edge")`` without np.pad's generic overhead."""
    h, w = array.shape
    p = np.empty((h + 2, w + 2), dtype=array.dtype)
    p[1:-1, 1:-1] = array
    p[0, 1:-1], p[-1, 1:-1] = array[0], array[-1]
    p[:, 0], p[:, -1] = p[:, 1], p[:, -2]
    return p


def box3(array: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edges replicated), as a row pass then a column pass.

    Both passes run on the padded image as one flat line (a row's neighbours are 1 apart, a
    column's w + 2): numpy's contiguous loops are several times faster than its loops over
    2-D views. What wraps around from one row to the next lands in the padding, dropped. Two
    allocations, each pass writing over what the previous one no longer needs.
    """
    h, w = array.shape
    stride = w + 2
    flat = pad_edge(array).reshape(-1)
    rows = flat[:-2] + flat[1:-1]
    rows += flat[2:]  # rows[k] sums flat[k:k + 3]: the row pass centred on flat index k + 1
    cols = np.add(rows[:-2 * stride], rows[stride:-stride], out=flat[:-2 * stride - 2])
    cols += rows[2 * stride:]  # cols[k] sums rows[k], rows[k + stride], rows[k + 2 * stride]
    # cols[k] is centred on flat index k + stride + 1: pixel (y, x) is k = y * stride + x,
    # a row of ``stride`` in flat (whose first h * stride - 2 values are cols) cut to w
    out = rows[:h * w].reshape(h, w)
    return np.divide(flat[:h * stride].reshape(h, stride)[:, :w], np.float32(9), out=out)


def runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The horizontal runs of a boolean mask, as start and end (exclusive) flat indices into
    the mask with one False column appended to each row (so no run crosses a row's end)."""
    h, w = mask.shape
    flat = np.zeros(h * (w + 1) + 1, dtype=bool)  # a leading False, then the padded rows
    flat[1:].reshape(h, w + 1)[:, :w] = mask
    changes = (flat[1:] != flat[:-1]).nonzero()[0]  # starts and ends alternate
    return changes[0::2], changes[1::2]


def components(starts: np.ndarray, ends: np.ndarray, stride: int) -> tuple[np.ndarray, int]:
    """8-connected component of each run (0..n-1 in row-major order of appearance), and n.

    Run j touches the runs i of the row above with s_i <= e_j and s_j <= e_i (exclusive ends
    make that include diagonal contact), a contiguous range in the sorted runs, and one row up
    is ``stride`` back in flat indices. The union-find over the touching pairs is Python:
    callers label maps of at most 128x128, a few thousand runs. With few runs (a digit on a
    small map) the pairs are found in Python too, walking the runs with two cursors: numpy's
    calls would cost more than they save.
    """
    if starts.size > FEW_RUNS:
        lo = np.searchsorted(ends, starts - stride, side="left")
        counts = np.maximum(np.searchsorted(starts, ends - stride, side="right") - lo, 0)
        below = np.repeat(np.arange(starts.size), counts)
        offsets = np.arange(below.size) - np.repeat(np.cumsum(counts) - counts, counts)
        pairs = zip((np.repeat(lo, counts) + offsets).tolist(), below.tolist())
    else:
        pairs = _touching(starts.tolist(), ends.tolist(), stride)
    parent = list(range(starts.size))
    for i, j in pairs:
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        while parent[j] != j:
            parent[j] = j = parent[parent[j]]
        if i < j:  # the smaller index stays the root: roots are first appearances
            parent[j] = i
        elif j < i:
            parent[i] = j
    ids, n = parent, 0  # parents have smaller indices: one pass in order reaches the roots
    for k, up in enumerate(parent):
        if up == k:
            ids[k], n = n, n + 1
        else:
            ids[k] = ids[up]  # already relabelled: up < k
    return np.array(ids, dtype=np.intp), n


# Up to this many runs, components() pairs them in Python, which costs less than numpy's
# fixed overhead; beyond, numpy is faster (docs/benchmarks.md).
FEW_RUNS = 200


def _touching(starts: list[int], ends: list[int], stride: int) -> list[tuple[int, int]]:
    """The pairs (i above, j) of touching runs, walking the sorted runs with two cursors."""
    pairs = []
    lo = 0
    for j, (start, end) in enumerate(zip(starts, ends)):
        reach = start - stride
        while ends[lo] < reach:  # ends are sorted too; lo <= j since ends[j] > reach
            lo += 1
        limit = end - stride
        i = lo
        while i < j and starts[i] <= limit:
            pairs.append((i, j))
            i += 1
    return pairs


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
