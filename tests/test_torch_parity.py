"""Optional: the same network, loss and optimizer as PyTorch give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from autodiff import ComputationGraphNode, Conv2d, MaxPool2d, SGDWithMomentum, cross_entropy
from models import ConvNetwork, DeepNetwork

torch = pytest.importorskip("torch")


@pytest.mark.parametrize("tanh, nesterov", [(False, False), (True, True)])
def test_training_steps_match_pytorch(tanh, nesterov):
    rng = np.random.default_rng(0)
    model = DeepNetwork(12, 4, 8, 2, tanh=tanh, rng=rng, dtype=np.float64)
    x = rng.standard_normal((16, 12))
    y = rng.integers(0, 4, 16)
    weights = [torch.tensor(p.value.copy(), requires_grad=True) for p in model.parameters()]
    lr, momentum = 0.1, 0.9
    ours = SGDWithMomentum(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov)
    # PyTorch's velocity is ours divided by -lr at constant lr, so the trajectories coincide
    theirs = torch.optim.SGD(weights, lr=lr, momentum=momentum, nesterov=nesterov)
    activation = torch.tanh if tanh else torch.relu
    for _ in range(3):
        ours.zero_grad()
        loss = cross_entropy()(model(x), y)
        loss.backward()
        theirs.zero_grad()
        h = torch.tensor(x)
        for i in range(0, len(weights) - 2, 2):
            h = activation(h @ weights[i] + weights[i + 1])
        torch_loss = torch.nn.functional.cross_entropy(h @ weights[-2] + weights[-1],
                                                       torch.tensor(y))
        torch_loss.backward()
        np.testing.assert_allclose(loss.value, torch_loss.item(), rtol=1e-10)
        for p, w in zip(model.parameters(), weights):
            np.testing.assert_allclose(p.grad, w.grad.numpy(), rtol=1e-8, atol=1e-12)
        ours.step()
        theirs.step()
    for p, w in zip(model.parameters(), weights):
        np.testing.assert_allclose(p.value, w.detach().numpy(), rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("x_shape, w_shape, stride, padding", [
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 1),
    ((1, 1, 7, 7), (2, 1, 5, 5), 2, 2),
    ((3, 2, 8, 9), (3, 2, 2, 3), (3, 1), (0, 2)),
])
def test_conv2d_forward_and_gradients_match_pytorch(x_shape, w_shape, stride, padding):
    rng = np.random.default_rng(1)
    x, W, b = rng.standard_normal(x_shape), rng.standard_normal(w_shape), rng.standard_normal(w_shape[0])  # noqa: N806, E501
    nodes = [ComputationGraphNode(a, require_grad=True) for a in (x, W, b)]
    out = Conv2d()(*nodes, stride=stride, padding=padding)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    tensors = [torch.tensor(a, requires_grad=True) for a in (x, W, b)]
    expected = torch.nn.functional.conv2d(*tensors, stride=stride, padding=padding)
    expected.backward(torch.tensor(g))
    np.testing.assert_allclose(out.value, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    for node, tensor in zip(nodes, tensors):
        np.testing.assert_allclose(node.grad, tensor.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kernel, stride", [(2, None), (3, 1), (3, 2), (2, 3)])
def test_maxpool_forward_and_gradients_match_pytorch_with_ties(kernel, stride):
    rng = np.random.default_rng(2)
    x = np.round(rng.standard_normal((2, 3, 9, 8)))  # few distinct values: many ties
    node = ComputationGraphNode(x, require_grad=True)
    out = MaxPool2d()(node, kernel, stride)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    tensor = torch.tensor(x, requires_grad=True)
    expected = torch.nn.functional.max_pool2d(tensor, kernel, stride)
    expected.backward(torch.tensor(g))
    np.testing.assert_array_equal(out.value, expected.detach().numpy())
    np.testing.assert_allclose(node.grad, tensor.grad.numpy(), rtol=1e-12)


def test_convnetwork_training_steps_match_pytorch():
    rng = np.random.default_rng(3)
    model = ConvNetwork(dim_output=5, image_size=12, channels=(3, 4), kernel_sizes=(3, 3),
                        paddings=(1, 0), pool=2, hidden_dims=(6,), rng=rng, dtype=np.float64)
    x = rng.standard_normal((8, 144))
    y = rng.integers(0, 5, 8)
    weights = [torch.tensor(p.value.copy(), requires_grad=True) for p in model.parameters()]
    ours = SGDWithMomentum(model.parameters(), lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD(weights, lr=0.1, momentum=0.9)
    functional = torch.nn.functional
    for _ in range(3):
        ours.zero_grad()
        loss = cross_entropy()(model(x), y)
        loss.backward()
        theirs.zero_grad()
        h = torch.tensor(x).reshape(8, 1, 12, 12)
        for i, conv in enumerate(model.convs):
            h = functional.conv2d(h, weights[2 * i], weights[2 * i + 1], padding=conv.padding)
            h = functional.relu(functional.max_pool2d(h, 2))
        h = h.flatten(1)
        dense = weights[2 * len(model.convs):]
        for i in range(0, len(dense) - 2, 2):
            h = functional.relu(h @ dense[i] + dense[i + 1])
        torch_loss = functional.cross_entropy(h @ dense[-2] + dense[-1], torch.tensor(y))
        torch_loss.backward()
        np.testing.assert_allclose(loss.value, torch_loss.item(), rtol=1e-10)
        for (name, p), w in zip(model.named_parameters(), weights):
            np.testing.assert_allclose(p.grad, w.grad.numpy(), rtol=1e-8, atol=1e-12,
                                       err_msg=name)
        ours.step()
        theirs.step()
    for p, w in zip(model.parameters(), weights):
        np.testing.assert_allclose(p.value, w.detach().numpy(), rtol=1e-8, atol=1e-12)
