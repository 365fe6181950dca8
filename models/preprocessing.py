"""Pixels to model inputs: one definition, used by the trainer and the server alike.

Images are float arrays in [0, 1] shaped (N, 28, 28) (or (28, 28)), ink bright on a dark
background as in MNIST. The model file records the constants, so serving applies exactly
what training did.
"""

from __future__ import annotations

import numpy as np

INPUT_SHAPE = (28, 28)


def preprocessing_config(mean: float, std: float) -> dict:
    """The JSON-able description stored in a model file's metadata["preprocessing"]."""
    if not (np.isfinite(mean) and np.isfinite(std) and std > 0):
        raise ValueError(f"invalid normalisation constants mean={mean}, std={std}")
    return {"input_shape": list(INPUT_SHAPE), "pixel_range": [0.0, 1.0],
            "mean": float(mean), "std": float(std)}


def to_model_input(images: np.ndarray, config: dict | None) -> np.ndarray:
    """(images - mean) / std, flattened to float32 (N, 784); no config means mean 0, std 1."""
    images = np.asarray(images, dtype=np.float32)
    if images.shape[-2:] != INPUT_SHAPE:
        raise ValueError(f"expected images of shape (N, 28, 28), got {images.shape}")
    flat = images.reshape(-1, INPUT_SHAPE[0] * INPUT_SHAPE[1])
    if not config:
        return flat
    mean = np.float32(config.get("mean", 0.0))
    inv_std = np.float32(1.0 / config.get("std", 1.0))
    return (flat - mean) * inv_std
