"""Data augmentation in numpy: random affine warps (shift, rotation, scale, slant), elastic
distortion, stroke thickness, blur and low resolution.

Digits drawn in a browser, typed, scanned or photographed are rarely centred, sized, slanted,
inked and sharp like MNIST's; small random changes of the training images make the model cope.
Vectorised over the batch: one bilinear gather for the warps (affine and elastic together), a
few shifted adds for blur, batched 28x28 matrix products for low resolution; no per-image
Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

SIZE = 28
_CENTRE = (SIZE - 1) / 2


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random transformations (uniformly drawn per image)."""

    max_shift: float = 2.0  # pixels, each axis
    max_rotation: float = 12.0  # degrees
    scale_range: tuple[float, float] = (0.9, 1.1)
    # slant, as the column offset per row from the centre (tan of the angle): +-0.3 is +-17
    # degrees, like handwriting and italic fonts (+0.3 to +0.7 points on realistic uploads)
    max_shear: float = 0.3
    thickness_probability: float = 0.3  # chance of thickening or thinning the strokes
    # elastic distortion (Simard et al. 2003): a smooth random displacement field, here random
    # offsets on a coarse grid of control points interpolated bilinearly (smooth by construction,
    # and far cheaper than Gaussian-filtering a per-pixel random field)
    elastic_probability: float = 0.5
    elastic_magnitude: float = 1.5  # standard deviation of a control point's offset, pixels
    elastic_grid: int = 4  # control points per side
    blur_probability: float = 0.2  # chance of a Gaussian blur (out-of-focus photos, soft pens)
    blur_sigma: tuple[float, float] = (0.5, 1.1)  # pixels
    # low-resolution scans: shrink to size x size (area average), enlarge back to 28x28
    lowres_probability: float = 0.15
    lowres_sizes: tuple[int, int] = (8, 16)  # inclusive range of the intermediate size
    flip_probability: float = 0.0  # mirror left to right: clothes, never digits

    def without(self, *names: str) -> AugmentConfig:
        """A copy with the named transformations (elastic, blur, lowres, thickness) turned off."""
        return replace(self, **{f"{name}_probability": 0.0 for name in names})


#: For photos of clothes (Fashion-MNIST): centred and upright, but a shirt mirrored is a shirt;
#: small shifts and scale changes, left-right mirroring, nothing that models handwriting.
CLOTHES = AugmentConfig(max_shift=2.0, max_rotation=0.0, scale_range=(0.95, 1.05), max_shear=0.0,
                        thickness_probability=0.0, elastic_probability=0.0, blur_probability=0.0,
                        lowres_probability=0.0, flip_probability=0.5)


def _affine_grids(n: int, rng: np.random.Generator, cfg: AugmentConfig) -> tuple[np.ndarray, ...]:
    """Source coordinates (rows, cols), each (n, 28, 28) float32, of every output pixel."""
    angle = np.deg2rad(rng.uniform(-cfg.max_rotation, cfg.max_rotation, n))
    scale = rng.uniform(cfg.scale_range[0], cfg.scale_range[1], n)
    shift = rng.uniform(-cfg.max_shift, cfg.max_shift, (n, 2))
    shear = rng.uniform(-cfg.max_shear, cfg.max_shear, n).astype(np.float32)[:, None, None]
    # inverse map: output pixel -> source pixel, rotating and scaling about the image centre,
    # then slanting (a row r from the centre reads r * shear columns further)
    cos = (np.cos(angle) / scale).astype(np.float32)[:, None, None]
    sin = (np.sin(angle) / scale).astype(np.float32)[:, None, None]
    r = np.arange(SIZE, dtype=np.float32) - np.float32(_CENTRE)
    rr = r[None, :, None] - shift[:, 0, None, None].astype(np.float32)
    cc = r[None, None, :] - shift[:, 1, None, None].astype(np.float32)
    src_r = cos * rr - sin * cc
    src_c = sin * rr + cos * cc + shear * src_r
    return src_r + np.float32(_CENTRE), src_c + np.float32(_CENTRE)


def _linear_matrix(position: np.ndarray, points: int) -> np.ndarray:
    """(len(position), points) float32: linear interpolation of ``points`` samples at the given
    positions (in sample units, clipped to the ends)."""
    position = np.clip(position, 0, points - 1)
    low = np.minimum(np.floor(position).astype(int), points - 2)
    frac = position - low
    rows = np.arange(len(position))
    matrix = np.zeros((len(position), points), dtype=np.float32)
    matrix[rows, low] = 1 - frac
    matrix[rows, low + 1] = frac
    return matrix


def elastic_offsets(n: int, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """(2, n, 28, 28) float32 smooth random displacements; zero for images not chosen."""
    chosen = (rng.random(n) < cfg.elastic_probability).astype(np.float32)
    k = cfg.elastic_grid
    coarse = rng.normal(0.0, cfg.elastic_magnitude, (2, n, k, k)).astype(np.float32)
    coarse *= chosen[None, :, None, None]
    up = _linear_matrix(np.linspace(0, k - 1, SIZE), k)  # control points span the image
    return up @ coarse @ up.T  # (28, k) @ (2, n, k, k) @ (k, 28)


def blur(images: np.ndarray, rng: np.random.Generator, probability: float,
         sigma: tuple[float, float]) -> np.ndarray:
    """Gaussian blur (separable, 5 taps, zero border) of a random subset of images."""
    chosen = rng.random(len(images)) < probability
    sigmas = rng.uniform(sigma[0], sigma[1], len(images))
    if not chosen.any():
        return images
    taps = np.arange(-2, 3)
    weights = np.exp(-0.5 * (taps[None, :] / sigmas[chosen, None]) ** 2)
    weights = (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)
    out = images.copy()
    x = images[chosen]
    for axis in (1, 2):
        padded = np.pad(x, [(0, 0)] + [(2, 2) if a == axis else (0, 0) for a in (1, 2)])
        x = sum(weights[:, t, None, None] * np.take(padded, np.arange(t, t + SIZE), axis=axis)
                for t in range(5))
    out[chosen] = x
    return out


def _shrink_matrix(size: int) -> np.ndarray:
    """(size, 28) float32: each output pixel averages the source pixels its cell covers."""
    edges = np.linspace(0, SIZE, size + 1)
    pixel = np.arange(SIZE)
    # overlap of source pixel [p, p+1) with cell [edges[i], edges[i+1])
    overlap = np.clip(np.minimum(edges[1:, None], pixel + 1) - np.maximum(edges[:-1, None], pixel),
                      0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def _enlarge_matrix(size: int, nearest: bool) -> np.ndarray:
    """(28, size) float32: back to 28 pixels, by nearest neighbour or bilinear interpolation."""
    centres = (np.arange(SIZE) + 0.5) * size / SIZE - 0.5  # in the small image's pixel units
    if nearest:
        matrix = np.zeros((SIZE, size), dtype=np.float32)
        matrix[np.arange(SIZE), np.clip(np.round(centres).astype(int), 0, size - 1)] = 1
        return matrix
    return _linear_matrix(centres, size)


_LOWRES_CACHE: dict[tuple[int, bool], np.ndarray] = {}


def lowres_matrix(size: int, nearest: bool) -> np.ndarray:
    """(28, 28): shrink to ``size`` then enlarge, as one linear map of rows (or columns)."""
    key = (size, nearest)
    if key not in _LOWRES_CACHE:
        _LOWRES_CACHE[key] = _enlarge_matrix(size, nearest) @ _shrink_matrix(size)
    return _LOWRES_CACHE[key]


def lowres(images: np.ndarray, rng: np.random.Generator, probability: float,
           sizes: tuple[int, int]) -> np.ndarray:
    """Shrink a random subset of images to 8-16 px and enlarge them back (nearest or bilinear)."""
    n = len(images)
    chosen = rng.random(n) < probability
    size = rng.integers(sizes[0], sizes[1] + 1, n)
    nearest = rng.random(n) < 0.5
    if not chosen.any():
        return images
    maps = np.stack([lowres_matrix(int(s), bool(m)) for s, m in zip(size[chosen],
                                                                      nearest[chosen])])
    out = images.copy()
    out[chosen] = maps @ images[chosen] @ maps.transpose(0, 2, 1)
    return out


def warp(images: np.ndarray, src_r: np.ndarray, src_c: np.ndarray) -> np.ndarray:
    """Bilinear sampling of ``images`` (n, 28, 28) at the given source coordinates; 0 outside."""
    n, width = len(images), SIZE + 2
    # one pixel of background on every side, so that every read lands inside the array
    padded = np.zeros((n, width, width), dtype=np.float32)
    padded[:, 1:-1, 1:-1] = images
    r = np.clip(src_r + 1, 0, SIZE + 1 - 1e-3)
    c = np.clip(src_c + 1, 0, SIZE + 1 - 1e-3)
    r_floor, c_floor = np.floor(r), np.floor(c)
    fr, fc = r - r_floor, c - c_floor  # float32 weights (float32 - int would give float64)
    r0, c0 = r_floor.astype(np.intp), c_floor.astype(np.intp)
    # flat index of the top-left neighbour in the whole batch; the others are +1, +width
    index = r0 * width + c0 + (np.arange(n, dtype=np.intp) * width * width)[:, None, None]
    flat = padded.reshape(-1)
    top_left, top_right = flat[index], flat[index + 1]
    bottom_left, bottom_right = flat[index + width], flat[index + width + 1]
    top = top_left + (top_right - top_left) * fc
    bottom = bottom_left + (bottom_right - bottom_left) * fc
    return top + (bottom - top) * fr


def _neighbourhood(images: np.ndarray, reduce) -> np.ndarray:
    """3x3 max (dilation) or min (erosion) filter with a zero border."""
    padded = np.pad(images, ((0, 0), (1, 1), (1, 1)))
    out = padded[:, 1:-1, 1:-1].copy()
    for dr in range(3):
        for dc in range(3):
            reduce(out, padded[:, dr : dr + SIZE, dc : dc + SIZE], out=out)
    return out


def thickness(images: np.ndarray, rng: np.random.Generator, probability: float) -> np.ndarray:
    """Thicken (blend with a dilation) or thin (blend with an erosion) a random subset of images."""
    n = len(images)
    chosen = rng.random(n) < probability
    amount = rng.uniform(0.3, 1.0, n).astype(np.float32)
    thicker = rng.random(n) < 0.5
    if not chosen.any():
        return images
    out = images.copy()
    for mask, reduce, strength in ((chosen & thicker, np.maximum, 1.0),
                                   (chosen & ~thicker, np.minimum, 0.5)):
        if mask.any():
            # erosion removes whole thin strokes at full strength, so thinning is half as strong
            a = (amount[mask] * strength)[:, None, None]
            out[mask] = (1 - a) * images[mask] + a * _neighbourhood(images[mask], reduce)
    return out


def augment_batch(images: np.ndarray, rng: np.random.Generator,
                  cfg: AugmentConfig | None = None) -> np.ndarray:
    """Randomly warped copies of ``images`` (n, 28, 28) float32 in [0, 1]; same shape and range."""
    cfg = cfg or AugmentConfig()
    src_r, src_c = _affine_grids(len(images), rng, cfg)
    if cfg.elastic_probability > 0:
        offsets = elastic_offsets(len(images), rng, cfg)
        src_r, src_c = src_r + offsets[0], src_c + offsets[1]
    out = warp(images, src_r, src_c)
    if cfg.thickness_probability > 0:
        out = thickness(out, rng, cfg.thickness_probability)
    if cfg.lowres_probability > 0:
        out = lowres(out, rng, cfg.lowres_probability, cfg.lowres_sizes)
    if cfg.blur_probability > 0:
        out = blur(out, rng, cfg.blur_probability, cfg.blur_sigma)
    if cfg.flip_probability > 0:
        flip = rng.random(len(out)) < cfg.flip_probability
        out[flip] = out[flip, :, ::-1]
    return np.clip(out, 0.0, 1.0, out=out)
