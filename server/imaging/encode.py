"""What the model saw, encoded for people: a 28x28 array as a PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from server.imaging.normalise import SIDE


def to_png(image28: np.ndarray) -> bytes:
    """An 8-bit grayscale PNG of a (28, 28) image in [0, 1] (what the model saw, for debugging)."""
    image = np.asarray(image28, dtype=np.float64)
    if image.shape != (SIDE, SIDE):
        raise ValueError(f"to_png expects a ({SIDE}, {SIDE}) array, got shape {image.shape}")
    pixels = np.clip(np.rint(np.nan_to_num(image) * 255.0), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()
