"""The course lab's own code, unchanged, runs on our engine (users of the lab must feel at home)."""

from __future__ import annotations

import numpy as np

from autodiff import SGD, Addition, ComputationGraphNode, SGDWithMomentum, TanH, nll
from models import DeepNetwork, LinearNetwork


def lab_train_data(n=512, seed=0):
    """A stand-in for the lab's MNIST split: (images (n, 784) float32 in [0, 1], labels)."""
    prototypes = np.random.default_rng(0).random((10, 784), dtype=np.float32)  # the classes
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    images = np.clip(prototypes[labels] + 0.3 * rng.random((n, 784), dtype=np.float32), 0, 1)
    return images.astype(np.float32), labels


def test_lab_example_runs_unchanged():
    train_data = lab_train_data()
    np.random.seed(42)

    # -- the lab's cell, verbatim --
    lin1 = LinearNetwork(784, 10)
    lin2 = LinearNetwork(10, 5)

    lin1.init_parameters()
    lin2.init_parameters()

    input_image = train_data[0][0]
    if input_image.ndim == 1:
        input_image = input_image.reshape(1, -1)

    x = ComputationGraphNode(input_image, require_grad=True)

    a = lin1.forward(Addition()(x, x))
    b = TanH()(a)
    c = lin2.forward(b)
    c.backward()
    # -- end of the lab's cell --

    assert x.grad is not None and x.grad.shape == (1, 784)
    # dc/dx summed over the 5 outputs = 2 * W1 @ diag(1 - tanh^2) @ W2 @ 1
    expected = 2 * lin1.W.value @ ((1 - b.value**2).T * lin2.W.value.sum(axis=1, keepdims=True))
    np.testing.assert_allclose(x.grad, expected.T, rtol=1e-4, atol=1e-6)


def lab_training_loop(network, optimizer, train_data, dev_data, n_epochs=10):
    """The lab's training_loop, verbatim but returning the accuracies instead of printing."""
    X_train, y_train = train_data  # noqa: N806
    X_dev, y_dev = dev_data  # noqa: N806
    accuracies = []
    for _epoch in range(n_epochs):
        optimizer.zero_grad()
        train_predictions = network.forward(X_train)
        y_train_node = ComputationGraphNode(y_train)
        loss_node = nll()(train_predictions, y_train_node)
        N = len(loss_node.value)  # noqa: N806
        loss_node.backward(np.ones_like(loss_node.value) / N)
        optimizer.step()
        dev_predictions = network.forward(X_dev)
        predicted_labels = np.argmax(dev_predictions.value, axis=1)
        accuracies.append(np.mean(predicted_labels == y_dev))
    return accuracies


def test_lab_training_loop_learns_with_both_optimizers():
    train, dev = lab_train_data(512, seed=1), lab_train_data(256, seed=2)
    network = LinearNetwork(784, 10)
    network.init_parameters()
    accuracies = lab_training_loop(network, SGD(network.parameters(), 0.01), train, dev, 30)
    assert accuracies[-1] > accuracies[0] and accuracies[-1] > 0.5

    network = DeepNetwork(784, 10, 100, 2)
    network.init_parameters()
    optimizer = SGDWithMomentum(network.parameters(), lr=0.05, momentum=0.9)
    accuracies = lab_training_loop(network, optimizer, train, dev, 30)
    assert accuracies[-1] > 0.9
