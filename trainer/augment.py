"""Data augmentation in numpy: random affine warps (shift, rotation, scale, slant) and stroke
thickness.

Digits drawn in a browser, typed or photographed are rarely centred, sized, slanted and inked
like MNIST's; small random warps of the training images make the model cope. Vectorised over the
batch: one bilinear gather for the whole batch, no per-image Python loop.
"""

from __future__ import annotations

from dataclasses import dataclass

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
    out = warp(images, src_r, src_c)
    if cfg.thickness_probability > 0:
        out = thickness(out, rng, cfg.thickness_probability)
    return np.clip(out, 0.0, 1.0, out=out)
