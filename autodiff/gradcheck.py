"""Finite-difference gradient checks with a diagnostic that names the op, input and element."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from autodiff.node import ComputationGraphNode


def numerical_gradient(f: Callable[[], float], array: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Central differences of the scalar ``f()`` with respect to every element of ``array``.

    ``array`` is perturbed in place and restored; ``f`` must read it afresh on every call.
    """
    grad = np.zeros(array.shape, dtype=np.float64)
    for i in np.ndindex(array.shape):  # not a flat view: of a non-contiguous array, it is a copy
        original = array[i]
        array[i] = original + eps
        plus = f()
        array[i] = original - eps
        minus = f()
        array[i] = original
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def gradcheck(
    fn: Callable[..., ComputationGraphNode],
    inputs: Sequence[np.ndarray],
    *,
    name: str | None = None,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-4,
    seed: int = 0,
) -> None:
    """Compare backward() of ``fn(*nodes)`` with central differences, in float64.

    The output is reduced with fixed random weights (so every output element matters).
    Raises AssertionError naming the op, the input, the element, expected and got.
    """
    arrays = [np.array(a, dtype=np.float64) for a in inputs]
    nodes = [ComputationGraphNode(a, require_grad=True) for a in arrays]
    out = fn(*nodes)
    weights = np.random.default_rng(seed).standard_normal(out.value.shape)
    out.backward(weights)
    label = name or getattr(fn, "__name__", repr(fn))

    def objective() -> float:
        return float(np.sum(fn(*[ComputationGraphNode(a) for a in arrays]).value * weights))

    for index, (array, node) in enumerate(zip(arrays, nodes)):
        expected = numerical_gradient(objective, array, eps)
        got = np.zeros_like(array) if node.grad is None else node.grad
        close = np.isclose(got, expected, atol=atol, rtol=rtol)
        if not close.all():
            element = tuple(int(i) for i in np.argwhere(~close)[0])
            raise AssertionError(
                f"gradcheck failed for {label}: input {index} (shape {array.shape}), "
                f"element {element}: expected {expected[element]:.8g} (finite differences), "
                f"got {got[element]:.8g} (backward); {int((~close).sum())} of {close.size} "
                f"elements differ"
            )
