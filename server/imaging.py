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
# Longest side of the map the connected components are labelled on (pure-Python labelling).
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
    """Let libjpeg decode big JPEGs at 1/2, 1/4 or 1/8 scale: far faster, same result for us."""
    if im.format in ("JPEG", "MPO") and max(im.size) > 2 * WORK_SIZE:
        scale = WORK_SIZE / max(im.size)
        im.draft(None, (max(1, int(im.size[0] * scale)), max(1, int(im.size[1] * scale))))


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
    gray_array = np.asarray(gray, dtype=np.float32) / np.float32(255)
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


def _block_reduce(array: np.ndarray, factor: int, func) -> np.ndarray:
    """Reduce each factor x factor block with ``func`` (edges padded with the edge values)."""
    h, w = array.shape
    ph, pw = -h % factor, -w % factor
    if ph or pw:
        array = np.pad(array, ((0, ph), (0, pw)), mode="edge")
    blocks = array.reshape(array.shape[0] // factor, factor, array.shape[1] // factor, factor)
    # one axis at a time: numpy reduces a contiguous last axis much faster than (1, 3) at once
    return func(func(blocks, axis=3), axis=1).astype(np.float32)


# --- paper and ink --------------------------------------------------------------------------


def _border(array: np.ndarray) -> np.ndarray:
    """Boolean mask of a band along the edges (about 3% of the short side, at least 1 pixel)."""
    h, w = array.shape
    band = max(1, round(0.03 * min(h, w)))
    mask = np.zeros((h, w), dtype=bool)
    mask[:band, :] = mask[-band:, :] = True
    mask[:, :band] = mask[:, -band:] = True
    return mask


def _composite(gray: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Flatten transparency onto paper.

    Transparent means paper. With a mostly opaque border the image has its own paper and is
    flattened onto white. With a transparent border there are two cases: a canvas drawing,
    whose opaque pixels are all one colour (the strokes), goes onto the opposite colour, so
    white strokes survive as well as black ones; an opaque sheet with a digit on it goes onto
    the sheet's own colour (the median of the opaque pixels), so only the digit stands out.
    """
    if np.mean(alpha[_border(alpha)] < 0.5) <= 0.5:
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


def _box3(array: np.ndarray) -> np.ndarray:
    """3x3 mean filter (edges replicated)."""
    p = np.pad(array, 1, mode="edge")
    h, w = array.shape
    out = np.zeros_like(array)
    for dy in range(3):
        for dx in range(3):
            out += p[dy:dy + h, dx:dx + w]
    return out / np.float32(9)


def _paper_plane(gray: np.ndarray, sample: np.ndarray) -> tuple[np.ndarray, float]:
    """The paper's grey level as a plane a + b*x + c*y fitted to the ``sample`` pixels, and the
    noise sigma of the fit.

    Two passes: the second drops sample pixels far from the first fit (ink touching the edge).
    """
    h, w = gray.shape
    ys, xs = np.nonzero(sample)
    step = max(1, ys.size // 4000)  # a few thousand samples pin a plane down well enough
    ys, xs = ys[::step], xs[::step]
    values = gray[ys, xs].astype(np.float64)
    design = np.stack([np.ones_like(values), xs / max(w, 1), ys / max(h, 1)], axis=1)
    keep = np.ones(values.shape, dtype=bool)
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[keep], values[keep], rcond=None)
        residual = values - design @ coef
        mad = float(np.median(np.abs(residual[keep] - np.median(residual[keep]))))
        keep = np.abs(residual) <= max(3.0 * 1.4826 * mad, 0.02)
        if keep.sum() < 3:
            break
    sigma = 1.4826 * float(np.median(np.abs(residual[keep]))) if keep.any() else 0.0
    xs = (coef[1] / max(w, 1) * np.arange(w)).astype(np.float32)
    ys = (coef[0] + coef[2] / max(h, 1) * np.arange(h)).astype(np.float32)
    return ys[:, None] + xs[None, :], sigma


def _find_paper(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Pixels that show bare paper, and whether the paper is a sheet framed by something else.

    Usually the border is paper. In a photo of a sheet lying on a table the border is the
    table; then the paper is the picture's dominant grey level, one broad region with the
    digit inside it, away from the picture's edge. (A fat digit cropped tightly can also
    dominate, but then what is not "paper" is its own background, which reaches the edge.)
    """
    border = _border(gray)
    step = max(1, max(gray.shape) // 128)
    small = gray[::step, ::step]
    level = float(np.median(small))
    if abs(float(np.median(gray[border])) - level) > 0.1:
        near = np.abs(small - level) < 0.1
        if near.mean() > 0.5 and stroke_width(near) > 0.2 * min(small.shape):
            labels, _ = label(~near)
            edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
            inside = np.count_nonzero(~np.isin(labels, edge))
            if inside > 0.005 * small.size:
                return np.abs(gray - level) < 0.1, True
    return border, False


def _extract_ink(gray: np.ndarray) -> tuple[np.ndarray, bool]:
    """Ink strength in [0, 1], 0 on paper, whatever the polarity; and whether it is framed."""
    paper, framed = _find_paper(gray)
    plane, sigma = _paper_plane(gray, paper)
    deviation = gray - plane
    smooth = _box3(deviation)
    if framed:  # decide the polarity on the sheet, not on the table around it
        rows = np.flatnonzero(paper.any(axis=1))
        cols = np.flatnonzero(paper.any(axis=0))
        smooth = smooth[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    # noise threshold: a few sigmas of the paper's residual noise, never below ~3 grey levels
    threshold = max(4.0 * sigma, 0.01)
    brighter = float(np.clip(smooth - threshold, 0, None).sum())
    darker = float(np.clip(-smooth - threshold, 0, None).sum())
    ink = -deviation if darker > brighter else deviation
    candidates = ink[ink > threshold]
    if candidates.size == 0:
        raise NoDigitFound(_no_digit_message())
    peak = float(np.percentile(candidates, 90))
    if peak - threshold < 0.08:  # too faint to tell from paper texture
        raise NoDigitFound(_no_digit_message())
    ink = np.clip((ink - threshold) / np.float32(peak - threshold), 0, 1).astype(np.float32)
    return ink, framed


# --- the digit ------------------------------------------------------------------------------


def label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component labels (1..n, 0 = background) and n.

    Union-find over horizontal runs rather than pixels: a digit is a few hundred runs, so the
    Python loop stays short even for thick strokes.
    """
    h, w = mask.shape
    edges = np.diff(np.pad(mask.astype(np.int8), ((0, 0), (1, 1))), axis=1)
    rows, starts = np.nonzero(edges == 1)
    _, ends = np.nonzero(edges == -1)  # exclusive; runs pair up in row-major order
    first = np.searchsorted(rows, np.arange(h + 1)).tolist()
    starts_l, ends_l = starts.tolist(), ends.tolist()
    parent = list(range(len(starts_l)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for r in range(1, h):
        i, i_end, j, j_end = first[r - 1], first[r], first[r], first[r + 1]
        while i < i_end and j < j_end:
            # runs in adjacent rows touch (diagonals included) when each starts by the
            # other's end
            if starts_l[i] <= ends_l[j] and starts_l[j] <= ends_l[i]:
                a, b = find(i), find(j)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            if ends_l[i] < ends_l[j]:
                i += 1
            else:
                j += 1
    labels = np.zeros((h, w), dtype=np.int32)
    numbers: dict[int, int] = {}
    for k, (r, s, e) in enumerate(zip(rows.tolist(), starts_l, ends_l)):
        labels[r, s:e] = numbers.setdefault(find(k), len(numbers) + 1)
    return labels, len(numbers)


def _keep_digit(ink: np.ndarray, framed: bool = False) -> np.ndarray:
    """Zero every ink component much lighter than the largest (specks, dust, JPEG debris).

    ``framed``: the paper is a sheet inside the picture, and what touches the picture's edge
    is the table around it, not ink.
    """
    factor = max(1, -(-max(ink.shape) // COARSE_SIZE))
    # max-pooling keeps thin strokes connected on the coarse map
    coarse = _block_reduce(ink, factor, np.max) if factor > 1 else ink
    mask = coarse > 0.05
    labels, n = label(mask)
    if n == 0:
        raise NoDigitFound(_no_digit_message())
    mass = np.bincount(labels.ravel(), weights=coarse.ravel(), minlength=n + 1)
    mass[0] = 0
    if framed:
        edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
        if not np.isin(np.flatnonzero(mass), edge).all():  # something is left inside
            mass[edge] = 0
    keep = mass >= 0.1 * mass.max()
    keep[0] = False
    # one pixel of margin keeps the faint anti-aliased rim around the kept strokes
    kept = _dilate(keep[labels])
    if factor > 1:
        kept = np.repeat(np.repeat(kept, factor, axis=0), factor, axis=1)
        kept = kept[:ink.shape[0], :ink.shape[1]]
    return np.where(kept, ink, np.float32(0))


def _dilate(mask: np.ndarray) -> np.ndarray:
    """Binary 3x3 dilation."""
    p = np.pad(mask, 1)
    h, w = mask.shape
    out = np.zeros_like(mask)
    for dy in range(3):
        for dx in range(3):
            out |= p[dy:dy + h, dx:dx + w]
    return out


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width of a binary mask, 2 * area / perimeter (a long stroke: 2wL / 2L)."""
    area = float(mask.sum())
    perimeter = float((mask[:, 1:] != mask[:, :-1]).sum() + (mask[1:, :] != mask[:-1, :]).sum())
    return 2 * area / max(perimeter, 1.0)


def _morph(image: np.ndarray, radius: int, op) -> np.ndarray:
    """Grey dilation (op=np.maximum) or erosion (np.minimum) by a roughly round disc.

    Alternating 3x3 squares and crosses approximates a disc (an octagon) for any radius.
    """
    for step in range(radius):
        p = np.pad(image, 1, mode="edge")
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
