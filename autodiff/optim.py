"""SGD and SGD with momentum: in-place updates, state kept in lists parallel to the parameters."""

from __future__ import annotations

import math

import numpy as np

from autodiff.node import ComputationGraphNode


class SGD:
    """Stochastic gradient descent: ``p -= lr * (grad + weight_decay * p)``.

    ``lr`` may be changed between steps (learning-rate schedules do). Parameters whose
    ``.grad`` is None (not reached by the last backward) are left as they are.
    """

    def __init__(self, params, lr: float = 0.1, weight_decay: float = 0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError("SGD got an empty parameter list")
        for i, p in enumerate(self.params):
            if not isinstance(p, ComputationGraphNode) or not p.require_grad:
                raise TypeError(
                    f"params[{i}] must be a Parameter (a node with require_grad=True), "
                    f"got {type(p).__name__}"
                )
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise ValueError(f"Invalid learning rate: {lr}")
        if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < math.inf):
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        # one scratch buffer per parameter, so that a step allocates nothing
        self._scratch = [np.empty_like(p.value) for p in self.params]

    def _scaled_gradient(self, i: int, p) -> np.ndarray:
        """-lr * (grad + weight_decay * p), written into this parameter's scratch buffer."""
        buf = self._scratch[i]
        if self.weight_decay:
            np.multiply(p.value, self.weight_decay, out=buf)
            buf += p.grad
            buf *= -self.lr
        else:
            np.multiply(p.grad, -self.lr, out=buf)
        return buf

    def step(self) -> None:
        """Update every parameter that has a gradient, in place."""
        for i, p in enumerate(self.params):
            if p.grad is not None:
                p.value += self._scaled_gradient(i, p)

    def zero_grad(self) -> None:
        """Forget the gradients before the next backward (set to None, as PyTorch does)."""
        for p in self.params:
            p.grad = None

    def state_dict(self) -> dict:
        """Hyper-parameters (and, for momentum, the velocity buffers) to resume training exactly."""
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def load_state_dict(self, state: dict) -> None:
        """Restore what ``state_dict()`` returned."""
        self.lr = float(state["lr"])
        self.weight_decay = float(state["weight_decay"])


class SGDWithMomentum(SGD):
    """SGD with momentum, in the lab's form: ``v = momentum * v - lr * grad;  p += v``.

    ``nesterov=True`` applies the look-ahead update ``p += momentum * v - lr * grad``.
    ``weight_decay`` adds ``weight_decay * p`` to the gradient (L2 regularisation).
    """

    def __init__(
        self,
        params,
        lr: float = 0.1,
        momentum: float = 0.5,
        weight_decay: float = 0.0,
        nesterov: bool = False,
    ):
        super().__init__(params, lr, weight_decay)
        if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
            raise ValueError(f"Invalid momentum value: {momentum} (expected 0 <= momentum < 1)")
        if nesterov and momentum == 0:
            raise ValueError("Nesterov momentum requires a momentum > 0")
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.velocities = [np.zeros_like(p.value) for p in self.params]

    def step(self) -> None:
        """Update velocities and parameters in place."""
        for i, p in enumerate(self.params):
            if p.grad is None:
                continue
            step = self._scaled_gradient(i, p)  # -lr * grad
            v = self.velocities[i]
            v *= self.momentum
            v += step
            if self.nesterov:
                p.value += step
                np.multiply(v, self.momentum, out=step)
                p.value += step
            else:
                p.value += v

    def state_dict(self) -> dict:
        return {
            **super().state_dict(),
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "velocities": [v.copy() for v in self.velocities],
        }

    def load_state_dict(self, state: dict) -> None:
        velocities = state["velocities"]
        if len(velocities) != len(self.velocities):
            raise ValueError(
                f"optimizer state has {len(velocities)} velocity buffers, "
                f"expected {len(self.velocities)} (one per parameter)"
            )
        for i, (mine, theirs) in enumerate(zip(self.velocities, velocities)):
            if np.shape(theirs) != mine.shape:
                raise ValueError(
                    f"velocity {i} has shape {np.shape(theirs)}, parameter has {mine.shape}"
                )
        super().load_state_dict(state)
        self.momentum = float(state["momentum"])
        self.nesterov = bool(state["nesterov"])
        for mine, theirs in zip(self.velocities, velocities):
            np.copyto(mine, theirs)
