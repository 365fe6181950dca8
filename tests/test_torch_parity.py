"""Optional: the same network, loss and optimizer as PyTorch give the same numbers."""

from __future__ import annotations

import numpy as np
import pytest

from autodiff import SGDWithMomentum, cross_entropy
from models import DeepNetwork

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
