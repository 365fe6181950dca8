"""Why this digit: integrated gradients of a class's logit, computed with our own engine.

Integrated gradients (Sundararajan, Taly and Yan, 2017) attribute the logit F_c of class c to
the pixels of an image x, against a baseline x' (here black, 0 in *pixel* space, which the
model file's normalisation maps to -mean/std):

    IG_i = (x_i - x'_i) · ∫_0^1 ∂F_c(x' + α(x - x')) / ∂x_i dα,     Σ_i IG_i = F_c(x) - F_c(x')

(completeness). Positive values are evidence for c, negative values evidence against it. The
integral is a trapezoid rule over ``steps`` intervals: the steps + 1 images of the path go
through the model as one batch, forward and backward once, with ``autodiff.grad`` (gradients
towards the images only: no weight gradients, nothing written into the model, which a server
shares between threads). Memory is that batch's activations, steps + 1 images. Why trapezoid:
its end points are the image and the baseline, so the same batch gives the two logits that
completeness is checked against, and the prediction to explain. For a ReLU network the
integrand is piecewise constant (it jumps where a unit switches), so any such rule errs by
O(1/steps); the midpoint rule measured about as accurate. Step counts, costs and errors:
docs/serving.md.

The path is taken in pixel space and normalised as the model's inputs are; the attributions
are the same in either space (the normalisation is affine, so the straight path stays one).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodiff import ComputationGraphNode, grad, is_grad_enabled
from models.module import Module
from models.preprocessing import INPUT_SHAPE, to_model_input

#: Trapezoid intervals along the path: within the budget of 10 ms of CPU beyond a prediction
#: with the default CNN, at about 1% completeness error (measured: docs/serving.md).
DEFAULT_STEPS = 32
#: More than this is refused: the batch of steps + 1 images bounds an explanation's memory.
MAX_STEPS = 512


@dataclass(frozen=True)
class Attribution:
    """Integrated gradients of one image for one class, with the two logits they explain."""

    #: (28, 28) float32 over the image the model saw, in logit units: Σ ≈ logit - baseline_logit
    map: np.ndarray
    #: the class explained (the predicted one unless asked otherwise)
    target: int
    #: F_target(image) and F_target(black), from the same batch
    logit: float
    baseline_logit: float

    @property
    def completeness_error(self) -> float:
        """Σ map - (logit - baseline_logit): the integration error of the trapezoid rule."""
        return float(self.map.sum(dtype=np.float64)) - (self.logit - self.baseline_logit)


def trapezoid_weights(steps: int) -> np.ndarray:
    """Weights of the points α = k/steps, k = 0..steps, of the trapezoid rule on [0, 1]."""
    weights = np.full(steps + 1, 1.0 / steps)
    weights[[0, -1]] /= 2
    return weights


def integrated_gradients(module: Module, image: np.ndarray, preprocessing: dict | None,
                         target: int | None = None,
                         steps: int = DEFAULT_STEPS) -> Attribution:
    """Integrated gradients of ``module``'s logit ``target`` (default: the predicted class) for
    one image (28, 28) in [0, 1], from a black baseline, in one batched forward and backward."""
    image = np.asarray(image, dtype=np.float32)
    if image.shape != INPUT_SHAPE:
        raise ValueError(f"expected one image of shape {INPUT_SHAPE}, got {image.shape}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) \
            or not 1 <= steps <= MAX_STEPS:
        raise ValueError(f"steps must be an integer in [1, {MAX_STEPS}], got {steps!r}")
    if not is_grad_enabled():
        raise RuntimeError("integrated_gradients() needs gradients: call it outside no_grad()")
    alphas = np.linspace(0.0, 1.0, steps + 1, dtype=np.float32)
    path = alphas[:, None, None] * image  # x' + α(x - x') with x' = 0 (black)
    dtype = module.parameters()[0].value.dtype  # float64 models are explained in float64
    inputs = ComputationGraphNode(to_model_input(path, preprocessing).astype(dtype),
                                  require_grad=True)
    logits = module(inputs)
    classes = logits.shape[1]
    if target is None:
        target = int(np.argmax(logits.value[-1]))
    elif isinstance(target, bool) or not isinstance(target, (int, np.integer)) \
            or not 0 <= target < classes:
        raise ValueError(f"target must be a class index in [0, {classes}), got {target!r}")
    seed = np.zeros(logits.shape, dtype=logits.dtype)
    seed[:, target] = trapezoid_weights(steps)  # Σ_k w_k ∇F(path_k): the integral, in one pass
    (gradients,) = grad(logits, [inputs], seed)
    delta = inputs.value[-1] - inputs.value[0]  # x - x' in the model's (normalised) inputs
    attributions = (delta * gradients.sum(axis=0)).reshape(INPUT_SHAPE).astype(np.float32)
    return Attribution(attributions, int(target), float(logits.value[-1, target]),
                       float(logits.value[0, target]))
