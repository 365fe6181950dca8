"""Every op and operator against float64 finite differences, plus forward values and errors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from autodiff import (
    ComputationGraphNode,
    Exp,
    Log,
    ReLU,
    Selection,
    Sigmoid,
    TanH,
    affine_transform,
    cross_entropy,
    log_softmax,
    nll,
)
from autodiff.gradcheck import gradcheck, numerical_gradient
from autodiff.ops import unbroadcast

rng = np.random.default_rng(1234)


def normal(*shape):
    return rng.standard_normal(shape)


def positive(*shape):
    return rng.uniform(0.5, 2.0, shape)


def away_from_zero(*shape):
    """Values with |x| >= 0.1, so ReLU's kink is not inside the finite-difference step."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.1, 0.5, x)


LABELS = np.array([0, 2, 1, 2, 0])

# (name, function of nodes, inputs): each checked by gradcheck in float64
CASES = [
    ("add", lambda x, y: x + y, [normal(3, 4), normal(3, 4)]),
    ("add broadcast row", lambda x, y: x + y, [normal(3, 4), normal(4)]),
    ("add broadcast column", lambda x, y: x + y, [normal(3, 1), normal(1, 4)]),
    ("add scalar node", lambda x, y: x + y, [normal(2, 3), normal()]),
    ("add constant", lambda x: x + 2.5, [normal(3)]),
    ("radd array", lambda x: np.ones((2, 3)) + x, [normal(3)]),
    ("Addition op", lambda x, y: __import__("autodiff").Addition()(x, y), [normal(2), normal(2)]),
    ("sub", lambda x, y: x - y, [normal(3, 4), normal(1, 4)]),
    ("rsub", lambda x: 1.0 - x, [normal(3)]),
    ("mul", lambda x, y: x * y, [normal(3, 4), normal(3, 4)]),
    ("mul broadcast", lambda x, y: x * y, [normal(2, 3, 4), normal(3, 1)]),
    ("rmul", lambda x: 3.0 * x, [normal(3)]),
    ("div", lambda x, y: x / y, [normal(3, 4), positive(3, 4)]),
    ("div broadcast", lambda x, y: x / y, [normal(3, 4), positive(4)]),
    ("rdiv", lambda x: 2.0 / x, [positive(3)]),
    ("neg", lambda x: -x, [normal(3, 2)]),
    ("pow", lambda x: x**3, [normal(4)]),
    ("pow fractional", lambda x: x**0.5, [positive(4)]),
    ("matmul", lambda x, y: x @ y, [normal(3, 4), normal(4, 2)]),
    ("matmul vector", lambda x, y: x @ y, [normal(3, 4), normal(4)]),
    ("vector matmul", lambda x, y: x @ y, [normal(4), normal(4, 2)]),
    ("matmul batched broadcast", lambda x, y: x @ y, [normal(2, 3, 4), normal(4, 5)]),
    ("rmatmul array", lambda y: np.ones((2, 3)) @ y, [normal(3, 2)]),
    ("sum all", lambda x: x.sum(), [normal(3, 4)]),
    ("sum axis 0", lambda x: x.sum(axis=0), [normal(3, 4)]),
    ("sum axis -1 keepdims", lambda x: x.sum(axis=-1, keepdims=True), [normal(3, 4)]),
    ("sum axes tuple", lambda x: x.sum(axis=(0, 2)), [normal(2, 3, 4)]),
    ("mean all", lambda x: x.mean(), [normal(3, 4)]),
    ("mean axis 1", lambda x: x.mean(axis=1), [normal(3, 4)]),
    ("mean keepdims", lambda x: x.mean(axis=0, keepdims=True), [normal(3, 4)]),
    ("reshape", lambda x: x.reshape(4, 3), [normal(3, 4)]),
    ("reshape tuple", lambda x: x.reshape((2, -1)), [normal(3, 4)]),
    ("transpose", lambda x: x.T, [normal(3, 4)]),
    ("select slice", lambda x: x[1:, ::2], [normal(3, 4)]),
    ("select int", lambda x: x[1], [normal(3, 4)]),
    ("select repeated indices", lambda x: x[[0, 0, 2]], [normal(3, 4)]),
    ("select boolean mask", lambda x: x[np.array([True, False, True])], [normal(3, 2)]),
    ("Selection op", lambda x: Selection()(x, (slice(None), 0)), [normal(3, 4)]),
    ("relu", lambda x: ReLU()(x), [away_from_zero(4, 5)]),
    ("tanh", lambda x: TanH()(x), [normal(4, 5)]),
    ("sigmoid", lambda x: Sigmoid()(x), [normal(4, 5) * 3]),
    ("exp", lambda x: Exp()(x), [normal(4)]),
    ("log", lambda x: Log()(x), [positive(4)]),
    (
        "affine_transform",
        lambda W, b, x: affine_transform()(W, b, x),  # noqa: N803
        [normal(4, 3), normal(1, 3), normal(5, 4)],
    ),
    (
        "affine_transform 1-d bias",
        lambda W, b, x: affine_transform()(W, b, x),  # noqa: N803
        [normal(4, 3), normal(3), normal(5, 4)],
    ),
    ("log_softmax", lambda x: log_softmax()(x), [normal(5, 3)]),
    ("log_softmax axis 0", lambda x: log_softmax()(x, 0), [normal(5, 3)]),
    ("nll", lambda x: nll()(x, LABELS), [normal(5, 3)]),
    ("nll labels (N, 1)", lambda x: nll()(x, LABELS.reshape(-1, 1)), [normal(5, 3)]),
    ("cross_entropy", lambda x: cross_entropy()(x, LABELS), [normal(5, 3)]),
    ("composite", lambda x, y: ((x * y).sum(axis=1) / (y**2 + 1.0).mean()).mean(),
     [normal(3, 4), normal(3, 4)]),
]


@pytest.mark.parametrize("name, fn, inputs", CASES, ids=[c[0] for c in CASES])
def test_gradients_match_finite_differences(name, fn, inputs):
    gradcheck(fn, inputs, name=name)


def test_gradcheck_failure_names_op_input_and_element():
    from autodiff import Operation

    class WrongSquare(Operation):
        """y = x**2 with a wrong backward (dx = g * x instead of 2 g x)."""

        @staticmethod
        def forward(x):
            return x * x, x

        @staticmethod
        def backward(saved, g, needs):
            return (g * saved,)

    with pytest.raises(AssertionError) as info:
        gradcheck(lambda x: WrongSquare()(x), [np.array([1.0, 2.0])], name="WrongSquare")
    message = str(info.value)
    assert "WrongSquare" in message and "input 0" in message and "element (0,)" in message
    assert "expected" in message and "got" in message


def test_numerical_gradient_perturbs_arrays_in_any_memory_order():
    x = np.arange(6.0).reshape(2, 3).T  # a transposed view: a flat reshape would be a copy
    grad = numerical_gradient(lambda: float((x * x).sum()), x)
    np.testing.assert_allclose(grad, 2 * x, atol=1e-6)
    np.testing.assert_array_equal(x, np.arange(6.0).reshape(2, 3).T)  # restored


@given(
    shape=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    data=st.data(),
)
@settings(max_examples=40, deadline=None)
def test_broadcast_gradients_any_shapes(shape, data):
    """x + y and x * y for random broadcast-compatible shapes: gradients have operand shapes."""
    other = [data.draw(st.sampled_from([1, n])) for n in shape]
    other = other[data.draw(st.integers(0, len(other) - 1)):]
    x, y = normal(*shape), normal(*other)
    gradcheck(lambda a, b: a * b + b, [x, y], name=f"broadcast {shape} {other}")


def test_unbroadcast_sums_leading_and_stretched_axes():
    g = np.ones((2, 3, 4))
    assert unbroadcast(g, (3, 1)).shape == (3, 1)
    np.testing.assert_array_equal(unbroadcast(g, (3, 1)), np.full((3, 1), 8.0))
    np.testing.assert_array_equal(unbroadcast(g, ()), np.array(24.0))


# -- forward values and numerical stability -------------------------------------------------
def test_forward_values_match_numpy():
    x = normal(4, 3)
    w = normal(3, 2)
    node = ComputationGraphNode(x)
    np.testing.assert_allclose((node @ w).value, x @ w)
    np.testing.assert_allclose(TanH()(node).value, np.tanh(x))
    np.testing.assert_allclose(Sigmoid()(node).value, 1 / (1 + np.exp(-x)))
    np.testing.assert_allclose(ReLU()(node).value, np.maximum(x, 0))
    expected = x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(log_softmax()(node).value, expected)


def test_tanh_and_sigmoid_are_stable_for_huge_inputs():
    x = ComputationGraphNode(np.array([-1e4, -50.0, 0.0, 50.0, 1e4]), require_grad=True)
    y = TanH()(x)
    np.testing.assert_array_equal(y.value, [-1, -1, 0, 1, 1])
    y.backward()
    assert np.isfinite(x.grad).all()
    s = Sigmoid()(x)
    assert s.value[0] == 0 and s.value[-1] == 1 and s.value[2] == 0.5
    s.backward()
    assert np.isfinite(x.grad).all()


def test_nll_is_stable_for_huge_logits():
    x = ComputationGraphNode(np.array([[1e4, 0.0, -1e4], [0.0, 0.0, 0.0]]), require_grad=True)
    loss = nll()(x, np.array([1, 2]))
    np.testing.assert_allclose(loss.value, [1e4, np.log(3)])
    loss.backward()
    assert np.isfinite(x.grad).all()


def test_cross_entropy_backward_is_softmax_minus_onehot_over_n():
    logits = normal(4, 3)
    labels = np.array([0, 1, 2, 1])
    x = ComputationGraphNode(logits, require_grad=True)
    cross_entropy()(x, labels).backward()
    softmax = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(x.grad, (softmax - np.eye(3)[labels]) / 4)
    np.testing.assert_allclose(
        cross_entropy()(ComputationGraphNode(logits), labels).value,
        nll()(ComputationGraphNode(logits), labels).value.mean(),
    )


@pytest.mark.parametrize("op", [lambda x: TanH()(x), lambda x: x * 2.0, lambda x: x.mean(),
                                lambda x: 1.0 / (x + 3.0), lambda x: log_softmax()(x),
                                lambda x: cross_entropy()(x, np.array([1, 0]))])
def test_float32_stays_float32(op):
    x = ComputationGraphNode(np.ones((2, 3), dtype=np.float32), require_grad=True)
    y = op(x)
    assert y.value.dtype == np.float32
    y.backward()
    assert x.grad.dtype == np.float32


# -- errors -------------------------------------------------------------------------------
def test_shape_mismatch_names_op_and_shapes():
    with pytest.raises(ValueError, match=r"Addition.*\(3,\).*\(4,\)"):
        ComputationGraphNode(np.ones(3)) + ComputationGraphNode(np.ones(4))
    with pytest.raises(ValueError, match=r"affine_transform.*\(2, 5\).*\(4, 3\)"):
        affine_transform()(np.ones((4, 3)), np.ones((1, 3)), ComputationGraphNode(np.ones((2, 5))))
    with pytest.raises(ValueError, match=r"MatMul"):
        ComputationGraphNode(np.ones((2, 3))) @ np.ones((2, 3))


def test_label_errors_are_clear():
    x = ComputationGraphNode(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="label 3 out of range for 3 classes"):
        nll()(x, np.array([0, 3]))
    with pytest.raises(ValueError, match="2 rows of logits but 3 labels"):
        cross_entropy()(x, np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="labels must be integers"):
        nll()(x, np.array([0.5, 1.0]))


def test_power_needs_a_number():
    x = ComputationGraphNode(np.ones(2))
    with pytest.raises(TypeError, match="exponent must be a number"):
        x ** np.ones(2)
