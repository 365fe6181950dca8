"""Graph mechanics: reuse, diamonds, deep chains, where gradients flow, no_grad, seeding."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from autodiff import (
    ComputationGraphNode,
    Operation,
    Parameter,
    TanH,
    affine_transform,
    grad,
    is_grad_enabled,
    no_grad,
)
from autodiff import ops as ops_module
from models import DeepNetwork


def leaf(values, dtype=np.float64):
    return ComputationGraphNode(np.array(values, dtype=dtype), require_grad=True)


def test_x_plus_x_times_x():
    """tinygrad's early bug: a node used twice must receive both contributions."""
    x = leaf([1.0, 2.0, -3.0])
    ((x + x) * x).backward()
    np.testing.assert_allclose(x.grad, 4 * x.value)  # d(2x^2)/dx


def test_a_times_a():
    a = leaf(3.0)
    (a * a).backward()
    assert a.grad == 6.0


def test_node_used_k_times():
    x = leaf([2.0])
    total = x
    for _ in range(9):
        total = total + x
    (total * 1.0).backward()
    np.testing.assert_allclose(x.grad, [10.0])


class CountingTwice(Operation):
    """y = 2x; counts how often backward runs."""

    calls = 0

    @staticmethod
    def forward(x):
        return 2 * x, None

    @staticmethod
    def backward(saved, g, needs):
        CountingTwice.calls += 1
        return (2 * g,)


def test_diamonds_are_linear_not_exponential():
    """40 stacked diamonds: the lab's recursive backward would make 2**40 calls."""
    CountingTwice.calls = 0
    x = leaf(1.0)
    node = x
    for _ in range(40):
        shared = CountingTwice()(node)
        node = shared + shared  # both branches of the diamond use `shared`
    node.backward()
    assert CountingTwice.calls == 40
    assert x.grad == pytest.approx(4.0**40)


def test_ten_thousand_node_chain_has_no_recursion_limit():
    x = leaf([1.0, 2.0])
    y = x
    for _ in range(10_000):
        y = y * 1.0 + 0.0
    y.sum().backward()
    np.testing.assert_allclose(x.grad, [1.0, 1.0])


def test_gradient_accumulates_across_backward_calls_until_zero_grad():
    x = leaf([1.0])
    (x * 3.0).backward()
    (x * 3.0).backward()
    np.testing.assert_allclose(x.grad, [6.0])
    x.zero_grad()
    (x * 3.0).backward()
    np.testing.assert_allclose(x.grad, [3.0])


def test_inputs_without_require_grad_get_no_grad():
    x = ComputationGraphNode(np.ones((2, 3)))
    w = leaf(np.ones((3, 1)))
    (x @ w).sum().backward()
    assert x.grad is None
    assert w.grad is not None


def test_first_layer_does_not_compute_input_gradient(monkeypatch):
    """The image batch needs no gradient: affine_transform.backward must skip dL/dx."""
    seen = []
    original = ops_module.affine_transform.backward

    def spy(saved, g, needs):
        grads = original(saved, g, needs)
        seen.append((tuple(needs), grads[2] is None))
        return grads

    monkeypatch.setattr(ops_module.affine_transform, "backward", staticmethod(spy))
    model = DeepNetwork(6, 3, 4, 2, rng=np.random.default_rng(0))
    model(np.ones((5, 6), dtype=np.float32)).sum().backward()
    first = seen[-1]  # backward runs from the output layer down to the first
    assert first == ((True, True, False), True)
    assert all(needs == (True, True, True) for needs, _ in seen[:-1])


def test_branch_leading_only_to_constants_is_not_walked():
    CountingTwice.calls = 0
    constant = ComputationGraphNode(np.ones(3))
    x = leaf(np.ones(3))
    (CountingTwice()(constant) * x).sum().backward()
    assert CountingTwice.calls == 0
    np.testing.assert_allclose(x.grad, 2 * np.ones(3))


def test_require_grad_propagates_from_inputs():
    x = ComputationGraphNode(np.ones(2))
    p = Parameter(np.ones(2))
    assert not (x * 2.0).require_grad
    assert (x * p).require_grad
    assert p.require_grad and isinstance(p, ComputationGraphNode)


def test_no_grad_records_nothing():
    p = Parameter(np.ones(3))
    assert is_grad_enabled()
    with no_grad():
        assert not is_grad_enabled()
        y = TanH()(p * 2.0)
    assert is_grad_enabled()
    assert not y.require_grad and y.func is None and y.input_nodes == () and y.saved is None
    with pytest.raises(RuntimeError, match="does not require grad"):
        y.backward()


class InferCounting(CountingTwice):
    """y = 2x, with an infer that counts its calls."""

    inferred = 0

    @staticmethod
    def infer(x):
        InferCounting.inferred += 1
        return 2 * x


def test_infer_runs_where_no_gradient_can_flow_and_forward_where_one_can():
    InferCounting.inferred = 0
    p = Parameter(np.ones(2))
    recorded = InferCounting()(p)
    assert InferCounting.inferred == 0 and recorded.func is not None
    constant = InferCounting()(ComputationGraphNode(np.ones(2)))  # grad on, nothing to reach
    with no_grad():
        inside = InferCounting()(p)
    assert InferCounting.inferred == 2
    for node in (constant, inside):
        assert not node.require_grad and node.func is None and node.saved is None
        np.testing.assert_array_equal(node.value, [2.0, 2.0])
    recorded.sum().backward()  # and the recorded one still differentiates
    np.testing.assert_array_equal(p.grad, [2.0, 2.0])


def test_infer_defaults_to_forward_without_its_saved_values():
    x = np.arange(3.0)
    np.testing.assert_array_equal(CountingTwice.infer(x), CountingTwice.forward(x)[0])
    np.testing.assert_array_equal(TanH.infer(x), np.tanh(x))


def test_no_grad_nests_and_restores_after_an_error():
    with no_grad():
        with no_grad():
            assert not is_grad_enabled()
        assert not is_grad_enabled()
    assert is_grad_enabled()
    with pytest.raises(KeyError):
        with no_grad():
            raise KeyError("inside")
    assert is_grad_enabled()


def test_no_grad_is_per_thread():
    inside = threading.Event()
    release = threading.Event()

    def worker():
        with no_grad():
            inside.set()
            release.wait(5)

    thread = threading.Thread(target=worker)
    thread.start()
    inside.wait(5)
    try:
        assert is_grad_enabled()  # another thread's no_grad() does not leak here
        assert (Parameter(np.ones(1)) * 2.0).require_grad
    finally:
        release.set()
        thread.join()


def test_backward_seeds_ones_like_the_output():
    x = leaf(np.ones((1, 5)))
    y = x * np.arange(5.0)
    y.backward()  # the lab calls c.backward() on a (1, 5) output
    np.testing.assert_allclose(x.grad, np.arange(5.0).reshape(1, 5))


def test_backward_rejects_a_gradient_of_the_wrong_shape():
    x = leaf(np.ones((2, 3)))
    y = x * 2.0
    with pytest.raises(ValueError, match=r"\(3, 2\).*\(2, 3\)"):
        y.backward(np.ones((3, 2)))


def test_bad_op_gradient_shape_names_op_and_shapes():
    class BadShape(Operation):
        @staticmethod
        def forward(x):
            return x.copy(), None

        @staticmethod
        def backward(saved, g, needs):
            return (g.sum(axis=0),)

    x = leaf(np.ones((2, 3)))
    with pytest.raises(ValueError, match=r"BadShape.*\(3,\).*\(2, 3\)"):
        BadShape()(x).backward()


def test_float32_by_default_and_float64_kept():
    assert ComputationGraphNode([1.0, 2.0]).value.dtype == np.float32
    assert Parameter([[1.0]]).value.dtype == np.float32
    assert ComputationGraphNode(np.ones(2)).value.dtype == np.float64
    assert ComputationGraphNode([1, 2]).value.dtype.kind == "i"  # labels stay integers
    with pytest.raises(TypeError, match="floating-point"):
        ComputationGraphNode([1, 2], require_grad=True)


def test_numpy_array_on_the_left_builds_a_node():
    x = leaf(np.ones(3))
    y = np.full(3, 2.0) * x
    assert isinstance(y, ComputationGraphNode)
    y.sum().backward()
    np.testing.assert_allclose(x.grad, np.full(3, 2.0))


def test_properties_and_repr():
    x = ComputationGraphNode(np.zeros((2, 3), dtype=np.float32))
    assert x.shape == (2, 3) and x.ndim == 2 and x.dtype == np.float32 and len(x) == 2
    assert x.T.shape == (3, 2)
    assert "Parameter(name='w'" in repr(Parameter(np.zeros(2), name="w"))
    assert str(ComputationGraphNode(np.array([1.5]))) == "[1.5]"


# -- grad(): gradients towards chosen inputs only ------------------------------------------------
class NeedsSpy(Operation):
    """y = x @ W as affine_transform without the bias; records each backward's ``needs``."""

    arity = 2
    seen: list = []

    @staticmethod
    def forward(x, W):  # noqa: N803
        return x @ W, (x, W)

    @staticmethod
    def backward(saved, g, needs):
        NeedsSpy.seen.append(list(needs))
        x, W = saved  # noqa: N806
        return (g @ W.T if needs[0] else None, x.T @ g if needs[1] else None)


def test_grad_matches_backward_on_a_reused_node():
    x = leaf([1.0, 2.0, -3.0])
    (dx,) = grad((x + x) * x, [x])
    np.testing.assert_allclose(dx, 4 * x.value)
    assert x.grad is None  # nothing written: grad() returns, backward() accumulates


def test_grad_computes_no_weight_gradient_and_writes_no_grad():
    """The explainer's use: gradients towards the images through a network's Parameters, whose
    gradients are neither computed (no dW products) nor stored (the model is shared)."""
    rng = np.random.default_rng(0)
    W = Parameter(rng.standard_normal((4, 3)))  # noqa: N806
    x = leaf(rng.standard_normal((2, 4)))
    NeedsSpy.seen = []
    y = TanH()(NeedsSpy()(x, W))
    seed = rng.standard_normal(y.shape)
    (dx,) = grad(y, [x], seed)
    assert NeedsSpy.seen == [[True, False]]
    assert W.grad is None and x.grad is None and y.grad is None
    y.backward(seed)  # the reference: backward() computes everything
    np.testing.assert_allclose(dx, x.grad)


def test_grad_of_several_inputs_including_an_intermediate_node():
    a, b = leaf([2.0]), leaf([3.0])
    h = a * b
    y = h * h + a
    da, dh = grad(y, [a, h])
    np.testing.assert_allclose(da, [2 * 6.0 * 3.0 + 1.0])  # dy/da = 2h·b + 1
    np.testing.assert_allclose(dh, [12.0])


def test_grad_refuses_inputs_it_cannot_differentiate():
    x, unused = leaf([1.0]), leaf([2.0])
    y = x * 2.0
    with pytest.raises(ValueError, match=r"inputs\[1\] is not used"):
        grad(y, [x, unused])
    with pytest.raises(ValueError, match=r"inputs\[0\] is not a node with require_grad"):
        grad(y, [ComputationGraphNode(np.ones(1))])
    with no_grad():
        z = x * 2.0
    with pytest.raises(RuntimeError, match="does not require grad"):
        grad(z, [x])


def test_grad_through_a_layer_with_parameters_gives_the_input_gradient():
    rng = np.random.default_rng(1)
    W, b = Parameter(rng.standard_normal((3, 2))), Parameter(np.zeros((1, 2)))  # noqa: N806
    x = leaf(rng.standard_normal((5, 3)))
    (dx,) = grad(affine_transform()(W, b, x), [x])
    np.testing.assert_allclose(dx, np.ones((5, 2)) @ W.value.T)
    assert W.grad is None and b.grad is None
