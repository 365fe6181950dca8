"""In-place initializers. Weights are stored (in, out) so that y = x @ W: fan_in is shape[0].

Each takes an optional ``np.random.Generator``; without one they draw from numpy's global
state, so that ``np.random.seed(42)`` in the lab's notebooks keeps working.
"""

from __future__ import annotations

import numpy as np


def _draw(rng: np.random.Generator | None):
    return np.random if rng is None else rng


def _check_matrix(W: np.ndarray, name: str) -> None:  # noqa: N803
    if W.ndim != 2:
        raise ValueError(f"{name} expects a 2-d weight matrix (in, out), got shape {W.shape}")


def zero_init(b: np.ndarray) -> None:
    """b = 0."""
    b.fill(0)


def glorot_init(W: np.ndarray, rng: np.random.Generator | None = None) -> None:  # noqa: N803
    """W ~ U(-a, a), a = sqrt(6 / (fan_in + fan_out)) (Glorot & Bengio 2010; for tanh)."""
    _check_matrix(W, "glorot_init")
    fan_in, fan_out = W.shape
    limit = np.sqrt(6.0 / max(fan_in + fan_out, 1))
    W[...] = _draw(rng).uniform(-limit, limit, size=W.shape)


def kaiming_init(W: np.ndarray, rng: np.random.Generator | None = None) -> None:  # noqa: N803
    """W ~ N(0, 2 / fan_in) (He et al. 2015; for ReLU)."""
    _check_matrix(W, "kaiming_init")
    std = np.sqrt(2.0 / max(W.shape[0], 1))
    W[...] = _draw(rng).normal(0.0, std, size=W.shape)
