"""SGD and SGD with momentum: the update rules, options, argument checks, state, allocations."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from autodiff import SGD, ComputationGraphNode, Parameter, SGDWithMomentum


def param_with_grad(value, grad):
    p = Parameter(np.array(value, dtype=np.float64))
    p.grad = np.array(grad, dtype=np.float64)
    return p


def test_sgd_step():
    p = param_with_grad([1.0, 2.0], [0.5, -1.0])
    SGD([p], lr=0.1).step()
    np.testing.assert_allclose(p.value, [0.95, 2.1])


def test_sgd_weight_decay():
    p = param_with_grad([1.0, 2.0], [0.0, 0.0])
    SGD([p], lr=0.1, weight_decay=0.5).step()
    np.testing.assert_allclose(p.value, [0.95, 1.9])


def test_momentum_follows_the_lab_formula():
    p = param_with_grad([1.0], [1.0])
    opt = SGDWithMomentum([p], lr=0.1, momentum=0.9)
    v, value = 0.0, 1.0
    for _ in range(5):
        opt.step()
        v = 0.9 * v - 0.1 * 1.0
        value += v
    np.testing.assert_allclose(p.value, [value])
    np.testing.assert_allclose(opt.velocities[0], [v])


def test_nesterov_looks_ahead():
    p = param_with_grad([0.0], [1.0])
    opt = SGDWithMomentum([p], lr=0.1, momentum=0.9, nesterov=True)
    v, value = 0.0, 0.0
    for _ in range(4):
        opt.step()
        v = 0.9 * v - 0.1
        value += 0.9 * v - 0.1
    np.testing.assert_allclose(p.value, [value])


def test_parameters_without_grad_are_left_alone():
    p = Parameter(np.ones(2))
    q = param_with_grad([1.0, 1.0], [1.0, 1.0])
    opt = SGDWithMomentum([p, q], lr=0.5, momentum=0.5)
    opt.step()
    np.testing.assert_array_equal(p.value, [1.0, 1.0])
    np.testing.assert_allclose(q.value, [0.5, 0.5])


def test_zero_grad_forgets_gradients():
    p = param_with_grad([1.0], [3.0])
    opt = SGD([p], lr=0.1)
    opt.zero_grad()
    assert p.grad is None


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"lr": 0.0}, "Invalid learning rate: 0.0"),
        ({"lr": -1}, "Invalid learning rate: -1"),
        ({"lr": float("nan")}, "Invalid learning rate: nan"),
        ({"momentum": 1.5}, "Invalid momentum value: 1.5"),
        ({"momentum": -0.1}, "Invalid momentum value: -0.1"),
        ({"weight_decay": -1e-4}, "Invalid weight_decay value: -0.0001"),
        ({"momentum": 0.0, "nesterov": True}, "Nesterov momentum requires a momentum > 0"),
    ],
)
def test_bad_arguments_name_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(".", r"\.")):
        SGDWithMomentum([Parameter(np.ones(1))], **{"lr": 0.1, **kwargs})


def test_params_must_be_parameters():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[1\] must be a Parameter"):
        SGD([Parameter(np.ones(1)), ComputationGraphNode(np.ones(1))], lr=0.1)


def test_accepts_any_iterable_of_parameters():
    params = (Parameter(np.ones(1)) for _ in range(3))
    assert len(SGD(params, lr=0.1).params) == 3


def test_step_updates_in_place_without_allocating():
    rng = np.random.default_rng(0)
    params = [Parameter(rng.random((300, 100), dtype=np.float32)) for _ in range(3)]
    for p in params:
        p.grad = rng.random(p.value.shape, dtype=np.float32)
    for opt in (SGDWithMomentum(params, lr=0.1, momentum=0.9, weight_decay=1e-4, nesterov=True),
                SGD(params, lr=0.1)):
        arrays = [p.value for p in params]
        opt.step()  # warm up
        tracemalloc.start()
        opt.step()
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 10_000, f"{type(opt).__name__}.step allocated {peak} bytes"
        assert all(p.value is a for p, a in zip(params, arrays))
        assert all(p.value.dtype == np.float32 for p in params)


def test_state_dict_round_trip_continues_identically():
    def make():
        p = param_with_grad([1.0, -1.0], [0.3, 0.7])
        return p, SGDWithMomentum([p], lr=0.1, momentum=0.9, weight_decay=0.01)

    p1, opt1 = make()
    for _ in range(3):
        opt1.step()
    p2, opt2 = make()
    p2.value[...] = p1.value
    opt2.load_state_dict(opt1.state_dict())
    for _ in range(3):
        opt1.step()
        opt2.step()
    np.testing.assert_array_equal(p1.value, p2.value)


def test_load_state_dict_checks_buffers():
    opt = SGDWithMomentum([Parameter(np.ones(2))], lr=0.1, momentum=0.9)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="velocity 0 has shape"):
        opt.load_state_dict({**state, "velocities": [np.zeros(3)]})
    with pytest.raises(ValueError, match="2 velocity buffers, expected 1"):
        opt.load_state_dict({**state, "velocities": [np.zeros(2)] * 2})
