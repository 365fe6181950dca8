"""Uploaded image bytes to an MNIST-like 28x28 array; pure (numpy + Pillow), no Flask.

MNIST digits are light ink on black, size-normalised into a 20x20 box (aspect ratio kept,
anti-aliased) and translated so that their centre of mass is at pixel (14, 14), 0-based.
``to_mnist`` brings photos, scans and canvas drawings to that form:

1. decode (only the formats we accept; the declared size is checked before any pixel is
   decoded), honour EXIF orientation, take the first frame, shrink very large images early;
2. composite transparency onto paper, convert to grey;
3. model the paper as a plane fitted to the border pixels (photos have lighting gradients) or,
   for a photo of a sheet lying on a table, to the sheet; decide the polarity from which side
   of the paper the strong deviations lie, and turn the image into "ink": bright on 0, with
   noise below a threshold derived from the paper's own noise set to 0;
4. find the digit as the large connected components of ink, dropping specks (and, around a
   sheet, whatever touches the picture's edge);
5. crop to its bounding box; bring pen-thin or marker-thick strokes into MNIST's range of
   stroke widths (grey dilation or erosion, measured at the scale of the 20-pixel box);
6. resize the long side to 20 pixels (area-averaged), and place it in 28x28 with an integer
   shift so the centre of mass falls on pixel (14, 14): MNIST's own digits come back unchanged.

Pure and thread-safe apart from ``warnings.catch_warnings`` around Pillow's open, which
silences its decompression-bomb warning (our own limit is checked right after, from the
declared size, before any pixel is decoded).
"""

from __future__ import annotations

import functools
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = [
    "ImageError",
    "ImageTooLarge",
    "InvalidImage",
    "NoDigitFound",
    "UnsupportedFormat",
    "label",
    "stroke_width",
    "to_mnist",
    "to_png",
]

# Pillow's format names. Phones' multi-picture JPEGs come out of the JPEG plugin as "MPO".
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# Longest side images are reduced to before the float stages: plenty for a 20x20 result,
# and it bounds memory and time for 40-megapixel photos.
WORK_SIZE = 512
# Longest side of the map the connected components are labelled on (their union-find is Python).
COARSE_SIZE = 128
BOX = 20  # MNIST's size-normalisation box
SIDE = 28
CENTRE = 14.0  # MNIST's mean centre of mass is (13.99, 14.01), 0-based, not 13.5
# MNIST's stroke width (stroke_width() of pixels > 0.5, in pixels of the 20-pixel box) is
# 1.35 / 1.83 / 2.56 at the 10th / 50th / 90th percentile of the test set. Pen lines thinner
# than THIN are thickened to TARGET; marker lines beyond THICK are thinned towards THINNED.
THIN, TARGET, THICK, THINNED = 1.5, 2.0, 3.0, 2.4

# Containers Pillow cannot read but that users upload; answered 415 rather than 400.
_FOREIGN_SIGNATURES = (
    (4, b"ftypheic"), (4, b"ftypheix"), (4, b"ftypmif1"), (4, b"ftypmsf1"), (4, b"ftypheif"),
    (4, b"ftypavif"), (0, b"%PDF"), (0, b"<svg"), (0, b"<?xml"),
)


class ImageError(ValueError):
    """An upload that cannot become a 28x28 digit; the message is user-facing and echoes nothing."""

    status, code = 400, "invalid_image"


class InvalidImage(ImageError):  # noqa: N818 - the API's names for the four answers
    """Empty, undecodable, truncated, or not an image at all."""

    status, code = 400, "invalid_image"


class UnsupportedFormat(ImageError):  # noqa: N818 - the API's names for the four answers
    """An image in a format outside PNG, JPEG, GIF, BMP, WebP and TIFF."""

    status, code = 415, "unsupported_format"


class ImageTooLarge(ImageError):  # noqa: N818 - the API's names for the four answers
    """More pixels than allowed, refused from the declared size before decoding."""

    status, code = 413, "image_too_large"


class NoDigitFound(ImageError):  # noqa: N818 - the API's names for the four answers
    """Nothing that looks like ink on paper: a blank or uniformly inked image."""

    status, code = 422, "no_digit_found"


def to_mnist(data: bytes, *, max_pixels: int = 40_000_000) -> np.ndarray:
    """Encoded image bytes -> float32 (28, 28) in [0, 1], ink bright on black like MNIST / 255.

    Raises InvalidImage, UnsupportedFormat, ImageTooLarge (more than ``max_pixels`` declared
    pixels) or NoDigitFound, all subclasses of ImageError.
    """
    gray, alpha = _decode(data, max_pixels)
    if alpha is not None:
        gray = _composite(gray, alpha)
    ink, framed = _extract_ink(gray)
    ink = _keep_digit(ink, framed)
    return _normalise(ink)


def to_png(image28: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a (28, 28) image in [0, 1] (what the model saw, for debugging)."""
    image = np.asarray(image28, dtype=np.float64)
    if image.shape != (SIDE, SIDE):
        raise ValueError(f"to_png expects a ({SIDE}, {SIDE}) array, got shape {image.shape}")
    pixels = np.clip(np.rint(np.nan_to_num(image) * 255.0), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


# --- decoding -------------------------------------------------------------------------------


def _decode(data: bytes, max_pixels: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Grey levels and alpha (or None) as float32 arrays in [0, 1], at most WORK_SIZE-ish."""
    if not isinstance(data, (bytes, bytearray, memoryview)) or len(data) == 0:
        raise InvalidImage("The upload is empty: send a PNG, JPEG, GIF, BMP, WebP or TIFF image.")
    data = bytes(data)
    for offset, magic in _FOREIGN_SIGNATURES:
        if data[offset:offset + len(magic)] == magic:
            raise UnsupportedFormat(_unsupported_message())
    # Pillow warns (DecompressionBombWarning) from inside Image.open, before we can look at the
    # size; we check the declared size ourselves right after, so its warnings are noise here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            im = Image.open(io.BytesIO(data), formats=FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(_too_large_message(max_pixels)) from exc
        except UnidentifiedImageError:
            raise _unidentified(data) from None
        except Exception as exc:  # a broken header can raise almost anything inside a plugin
            raise InvalidImage(_invalid_message()) from exc
        width, height = im.size
        if width <= 0 or height <= 0:
            raise InvalidImage(_invalid_message())
        if width * height > max_pixels:
            raise ImageTooLarge(_too_large_message(max_pixels))
        try:
            _draft(im)
            im.load()
            im = _orient(im)
            return _to_arrays(im)
        except ImageError:
            raise
        except Image.DecompressionBombError as exc:
            raise ImageTooLarge(_too_large_message(max_pixels)) from exc
        except Exception as exc:  # truncated or corrupt pixel data
            raise InvalidImage(_invalid_message()) from exc


def _unidentified(data: bytes) -> ImageError:
    """415 when Pillow knows the format but we don't accept it, 400 when it is not an image."""
    try:
        with Image.open(io.BytesIO(data)) as other:
            other.format  # noqa: B018 - opened: some image format, just not one of ours
    except Exception:
        return InvalidImage(_invalid_message())
    return UnsupportedFormat(_unsupported_message())


def _draft(im: Image.Image) -> None:
    """Let libjpeg decode JPEGs straight to grey, and big ones at 1/2, 1/4 or 1/8 scale.

    Far faster and the same for us: a JPEG stores luma with the weights Pillow's "L" uses, so
    this skips a colour conversion there and back.
    """
    if im.format in ("JPEG", "MPO"):
        size = None
        if max(im.size) > 2 * WORK_SIZE:
            scale = WORK_SIZE / max(im.size)
            size = (max(1, int(im.size[0] * scale)), max(1, int(im.size[1] * scale)))
        im.draft("L", size)


def _orient(im: Image.Image) -> Image.Image:
    """Apply the EXIF orientation tag; a damaged EXIF block is ignored, not an error."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:
        return im
    if orientation in (2, 3, 4, 5, 6, 7, 8):
        return ImageOps.exif_transpose(im)
    return im


def _to_arrays(im: Image.Image) -> tuple[np.ndarray, np.ndarray | None]:
    if im.mode.startswith("I;16"):
        im = im.convert("I")
    if im.mode in ("I", "F"):
        factor = -(-max(im.size) // WORK_SIZE)
        if factor > 1:  # shrink before the float64 copy: bounds memory
            im = im.reduce(factor)
        return _scale_deep(np.asarray(im, dtype=np.float64)), None
    if im.mode == "1":
        im = im.convert("L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or im.has_transparency_data
    if has_alpha:
        im = im.convert("RGBA")
        alpha = im.getchannel("A")
        gray = im.convert("RGB").convert("L")
    else:
        alpha = None
        gray = im if im.mode == "L" else im.convert("RGB").convert("L")
    factor = -(-max(gray.size) // WORK_SIZE)  # ceil: the result is at most WORK_SIZE
    if factor > 1:  # box-average in uint8 before going to float: bounds memory
        gray = gray.reduce(factor)
        alpha = alpha.reduce(factor) if alpha is not None else None
    gray_array = np.asarray(gray, dtype=np.float32)  # a converted copy: ours to scale
    gray_array /= np.float32(255)
    if alpha is None:
        return gray_array, None
    alpha_array = np.asarray(alpha, dtype=np.float32) / np.float32(255)
    if alpha_array.min() >= 0.99:  # opaque after all
        return gray_array, None
    return gray_array, alpha_array


def _scale_deep(array: np.ndarray) -> np.ndarray:
    """16/32-bit integer or float pixels to [0, 1], guessing the range from the values."""
    array = np.nan_to_num(array)
    high = float(array.max()) if array.size else 0.0
    low = float(array.min()) if array.size else 0.0
    if low >= 0 and high <= 1:
        return array.astype(np.float32)
    if low >= 0 and high <= 255:
        return (array / 255.0).astype(np.float32)
    if low >= 0 and high <= 65535:
        return (array / 65535.0).astype(np.float32)
    return ((array - low) / max(high - low, 1e-12)).astype(np.float32)


def _block_max(array: np.ndarray, factor: int) -> np.ndarray:
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


def _median(values: np.ndarray) -> float:
    """np.median of a 1-D array, without its generic-axis overhead (this runs per upload)."""
    n = values.size
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float(np.mean(part[k - 1:k + 1]))


def _percentile(values: np.ndarray, q: float) -> float:
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


# --- paper and ink --------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def _border_index(h: int, w: int) -> np.ndarray:
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


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten transparency onto paper.

    Transparent means paper. With a mostly opaque border the image has its own paper and is
    flattened onto white. With a transparent border there are two cases: a canvas drawing,
    whose opaque pixels are all one colour (the strokes), goes onto the opposite colour, so
    white strokes survive as well as black ones; an opaque sheet with a digit on it goes onto
    the sheet's own colour (the median of the opaque pixels), so only the digit stands out.
    """
    if np.mean(alpha.reshape(-1)[_border_index(*alpha.shape)] < 0.5) <= 0.5:
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


def _pad_edge(array: np.ndarray) -> np.ndarray:
    """``np.pad(array, 1, mode="edge")`` without np.pad's generic overhead."""
    h, w = array.shape
    p = np.empty((h + 2, w + 2), dtype=array.dtype)
    p[1:-1, 1:-1] = array
    p[0, 1:-1], p[-1, 1:-1] = array[0], array[-1]
    p[:, 0], p[:, -1] = p[:, 1], p[:, -2]
    return p


def _box3(array: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edges replicated), as a row pass then a column pass."""
    h, w = array.shape
    p = _pad_edge(array)
    rows = p[:, :-2] + p[:, 1:-1]
    rows += p[:, 2:]
    # the result goes into the padded copy, no longer needed: one big allocation fewer
    out = np.add(rows[:-2], rows[1:-1], out=p[:h, :w])
    out += rows[2:]
    out /= np.float32(9)
    return out


def _paper_plane(gray: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray | float, float]:
    """The paper's grey level as a plane a + b*x + c*y fitted to the pixels at the flat indices
    ``sample``, and the noise sigma of the fit. A flat sample gives its level itself.

    Two passes: the second drops sample pixels far from the first fit (ink touching the edge).
    Least squares through the normal equations, all of them from one product: the columns
    1, x/w, y/h are well conditioned. Medians in float32, which numpy partitions much faster.
    """
    h, w = gray.shape
    step = max(1, sample.size // 4000)  # a few thousand samples pin a plane down well enough
    sample = sample[::step]
    values = gray.reshape(-1)[sample]
    low = values.min()
    if low == values.max():  # what the fit below would give, up to rounding
        return float(low), 0.0
    ys, xs = np.divmod(sample, w)
    terms = np.empty((4, values.size))  # rows 1, x/w, y/h, value: float64
    terms[0] = 1
    np.divide(xs, max(w, 1), out=terms[1])
    np.divide(ys, max(h, 1), out=terms[2])
    terms[3] = values
    keep = np.ones(values.shape, dtype=bool)
    for _ in range(2):
        gram = (terms * keep) @ terms.T
        try:
            coef = np.linalg.solve(gram[:3, :3], gram[:3, 3])
        except np.linalg.LinAlgError:  # singular: one row or one column of samples
            coef = np.linalg.lstsq(terms[:3, keep].T, terms[3, keep], rcond=None)[0]
        residual = (terms[3] - coef @ terms[:3]).astype(np.float32)
        kept = residual[keep]
        mad = _median(np.abs(kept - _median(kept)))
        keep = np.abs(residual) <= max(3.0 * 1.4826 * mad, 0.02)
        if np.count_nonzero(keep) < 3:
            break
    sigma = 1.4826 * _median(np.abs(residual[keep])) if keep.any() else 0.0
    xs = (coef[1] / max(w, 1) * np.arange(w)).astype(np.float32)
    ys = (coef[0] + coef[2] / max(h, 1) * np.arange(h)).astype(np.float32)
    return ys[:, None] + xs[None, :], sigma


def _find_paper(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Flat indices of pixels that show bare paper, and whether the paper is a sheet framed by
    something else.

    Usually the border is paper. In a photo of a sheet lying on a table the border is the
    table; then the paper is the picture's dominant grey level, one broad region with the
    digit inside it, away from the picture's edge. (A fat digit cropped tightly can also
    dominate, but then what is not "paper" is its own background, which reaches the edge.)
    """
    border = _border_index(*gray.shape)
    step = max(1, max(gray.shape) // 128)
    small = gray[::step, ::step]
    edge = gray.reshape(-1)[border]
    low = edge.min()
    if low == edge.max() and 2 * np.count_nonzero(small == low) > small.size:
        return border, False  # both medians are that level (a clean scan, a canvas, MNIST)
    level = _median(small.reshape(-1))
    if abs(_median(edge) - level) > 0.1:
        near = np.abs(small - level) < 0.1
        if near.mean() > 0.5 and stroke_width(near) > 0.2 * min(small.shape):
            labels, _ = label(~near)
            edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            inside = np.count_nonzero(~np.isin(labels, edge))
            if inside > 0.005 * small.size:
                return np.flatnonzero(np.abs(gray - level) < 0.1), True
    return border, False


def _darker_ink(deviation: np.ndarray, threshold: float, box: tuple | None = None) -> bool:
    """Whether the ink is darker than the paper: more of the smoothed deviation lies beyond the
    threshold below the paper than above it, within ``box`` (top, bottom, left, right)."""
    h, w = deviation.shape
    top, bottom, left, right = box or (0, h, 0, w)
    if float(deviation[top:bottom, left:right].min()) >= -threshold:
        return False  # nothing below: skip the smoothing (a mean of values >= -t is >= -t)
    # smooth with one pixel of context around the box, as over the whole picture
    y0, x0 = max(top - 1, 0), max(left - 1, 0)
    smooth = _box3(deviation[y0:bottom + 1, x0:right + 1])
    smooth = smooth[top - y0:bottom - y0, left - x0:right - x0]
    # brighter - darker = sum(clip(s - t, 0)) - sum(clip(-s - t, 0)) = sum(s - clip(s, -t, t))
    excess = np.clip(smooth, -threshold, threshold)
    np.subtract(smooth, excess, out=excess)
    return float(excess.sum()) < 0


def _extract_ink(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ink strength in [0, 1], 0 on paper, whatever the polarity; and whether it is framed."""
    paper, framed = _find_paper(gray)
    plane, sigma = _paper_plane(gray, paper)
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
    candidates = ink[ink > threshold]
    if candidates.size == 0:
        raise NoDigitFound(_no_digit_message())
    peak = _percentile(candidates, 90)
    if peak - threshold < 0.08:  # too faint to tell from paper texture
        raise NoDigitFound(_no_digit_message())
    np.subtract(ink, threshold, out=ink)
    np.divide(ink, np.float32(peak - threshold), out=ink)
    np.clip(ink, 0, 1, out=ink)
    return ink, framed


# --- the digit ------------------------------------------------------------------------------


def _runs(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The horizontal runs of a boolean mask, as start and end (exclusive) flat indices into
    the mask with one False column appended to each row (so no run crosses a row's end)."""
    h, w = mask.shape
    flat = np.zeros(h * (w + 1) + 1, dtype=bool)  # a leading False, then the padded rows
    flat[1:].reshape(h, w + 1)[:, :w] = mask
    changes = np.flatnonzero(flat[1:] != flat[:-1])  # starts and ends alternate
    return changes[0::2], changes[1::2]


def _components(starts: np.ndarray, ends: np.ndarray, stride: int) -> tuple[np.ndarray, int]:
    """8-connected component of each run (0..n-1 in row-major order of appearance), and n.

    The touching pairs are found with numpy: run j touches the runs i of the row above with
    s_i <= e_j and s_j <= e_i (exclusive ends make that include diagonal contact), a
    contiguous range in the sorted runs, and one row up is ``stride`` back in flat indices.
    Only the union-find over those pairs runs in Python: a digit is a few hundred runs.
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


def _paint(values: np.ndarray, starts: np.ndarray, ends: np.ndarray,
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
    starts, ends = _runs(mask)
    ids, n = _components(starts, ends, mask.shape[1] + 1)
    return np.ascontiguousarray(_paint(ids.astype(np.int32) + 1, starts, ends, mask.shape)), n


def _keep_digit(ink: np.ndarray, framed: bool = False) -> np.ndarray:
    """Zero every ink component much lighter than the largest (specks, dust, JPEG debris).

    ``framed``: the paper is a sheet inside the picture, and what touches the picture's edge
    is the table around it, not ink. Works in place on ``ink``.
    """
    factor = max(1, -(-max(ink.shape) // COARSE_SIZE))
    # max-pooling keeps thin strokes connected on the coarse map
    coarse = _block_max(ink, factor) if factor > 1 else ink
    h, w = coarse.shape
    mask = coarse > 0.05
    starts, ends = _runs(mask)
    if starts.size == 0:
        raise NoDigitFound(_no_digit_message())
    ids, n = _components(starts, ends, w + 1)
    kept = mask
    if n > 1:  # one component is kept whole
        padded = np.zeros((h, w + 1))  # float64 sums, laid out like the runs' indices
        padded[:, :w] = coarse
        bounds = np.stack([starts, ends], 1).reshape(-1)
        mass = np.bincount(ids, weights=np.add.reduceat(padded.reshape(-1), bounds)[::2])
        if framed:
            rows, first = np.divmod(starts, w + 1)
            touching = (rows == 0) | (rows == h - 1) | (first == 0) | (ends - rows * (w + 1) == w)
            edge = np.unique(ids[touching])
            if edge.size < n:  # something is left inside
                mass[edge] = 0
        keep = mass >= 0.1 * mass.max()
        if not keep.all():
            kept = _paint(keep[ids].view(np.int8), starts, ends, (h, w)) != 0
    # one pixel of margin keeps the faint anti-aliased rim around the kept strokes
    kept = _dilate(kept)
    if factor > 1:
        kept = np.repeat(np.repeat(kept, factor, axis=0), factor, axis=1)
        kept = kept[:ink.shape[0], :ink.shape[1]]
    np.multiply(ink, kept, out=ink)
    return ink


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary 3x3 dilation, as a row pass then a column pass."""
    rows = mask.copy()
    rows[:, 1:] |= mask[:, :-1]
    rows[:, :-1] |= mask[:, 1:]
    out = rows.copy()
    out[1:] |= rows[:-1]
    out[:-1] |= rows[1:]
    return out


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask, 2 * area / perimeter (a long stroke: 2wL / 2L)."""
    area = np.count_nonzero(mask)
    perimeter = (np.count_nonzero(mask[:, 1:] != mask[:, :-1])
                 + np.count_nonzero(mask[1:, :] != mask[:-1, :]))
    return 2 * area / max(perimeter, 1.0)


def _morph(image: np.ndarray, radius: int, op) -> np.ndarray:
    """Grey dilation (op=np.maximum) or erosion (np.minimum) by a roughly round disc.

    Alternating 3x3 squares and crosses approximates a disc (an octagon) for any radius.
    """
    for step in range(radius):
        p = _pad_edge(image)
        h, w = image.shape
        out = image.copy()
        for dy, dx in ((0, 1), (1, 0), (1, 2), (2, 1)):
            out = op(out, p[dy:dy + h, dx:dx + w])
        if step % 2 == 0:
            for dy, dx in ((0, 0), (0, 2), (2, 0), (2, 2)):
                out = op(out, p[dy:dy + h, dx:dx + w])
        image = out
    return image


def _crop(ink: np.ndarray) -> np.ndarray:
    rows = np.flatnonzero(ink.any(axis=1))
    cols = np.flatnonzero(ink.any(axis=0))
    if rows.size == 0:
        raise NoDigitFound(_no_digit_message())
    return ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _normalise_stroke(crop: np.ndarray) -> np.ndarray:
    """Bring pen-thin and marker-thick strokes into MNIST's range, measured at the box scale.

    A 1-pixel pen line on a phone photo would otherwise shrink to a faint hairline in 20x20,
    and a fat marker fills the loops of 6, 8 and 9. MNIST's own digits are left alone.
    """
    mask = crop > 0.5
    if not mask.any():
        return crop
    scale = BOX / max(crop.shape)
    width = stroke_width(mask) * scale
    if width < THIN:
        radius = round((TARGET - width) / (2 * scale))
        if radius > 0:
            return _crop(_morph(np.pad(crop, radius), radius, np.maximum))
    elif width > THICK:
        radius = int((width - THINNED) / (2 * scale))
        if radius > 0:
            thinner = _morph(crop, radius, np.minimum)
            if (thinner > 0.5).any():
                return _crop(thinner)
    return crop


def _normalise(ink: np.ndarray) -> np.ndarray:
    """Crop to the ink, fit the long side to 20 pixels, centre the mass at (14, 14) in 28x28."""
    crop = _normalise_stroke(_crop(ink))
    h, w = crop.shape
    scale = BOX / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size != (w, h):
        # area averaging when shrinking is the anti-aliasing MNIST describes; bilinear to enlarge
        resample = Image.Resampling.BOX if scale < 1 else Image.Resampling.BILINEAR
        crop = np.asarray(Image.fromarray(crop, mode="F").resize(size, resample=resample))
        crop = np.clip(crop, 0, 1)
    total = float(crop.sum())
    if total <= 0:
        raise NoDigitFound(_no_digit_message())
    h, w = crop.shape
    cy = float((crop.sum(axis=1) * np.arange(h)).sum()) / total
    cx = float((crop.sum(axis=0) * np.arange(w)).sum()) / total
    # integer shift: MNIST's own digits then come back unchanged (no resampling blur)
    top = min(max(round(CENTRE - cy), 0), SIDE - h)
    left = min(max(round(CENTRE - cx), 0), SIDE - w)
    out = np.zeros((SIDE, SIDE), dtype=np.float32)
    out[top:top + h, left:left + w] = crop
    return out


# --- messages (user-facing: they never echo the upload) ---------------------------------------


def _invalid_message() -> str:
    return ("The upload could not be decoded as an image (corrupt, truncated or not an image): "
            "send a PNG, JPEG, GIF, BMP, WebP or TIFF file.")


def _unsupported_message() -> str:
    return "This image format is not supported: send a PNG, JPEG, GIF, BMP, WebP or TIFF file."


def _too_large_message(max_pixels: int) -> str:
    return (f"The image has too many pixels (the limit is {max_pixels:,}): "
            "scale it down and send it again.")


def _no_digit_message() -> str:
    return ("No digit found: the image looks blank or uniformly inked. Send a dark digit on "
            "light paper, or a light digit on a dark background.")
