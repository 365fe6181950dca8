"""Operations: pure numpy ``forward``/``backward`` pairs; ``Operation.__call__`` records them.

Each op's ``forward(*arrays, *params)`` returns ``(output, saved)``: what backward needs is kept
from the forward pass, never recomputed. ``backward(saved, g, needs)`` returns one gradient per
graph input, computing only those whose ``needs`` flag is set (``None`` for the others).
Where no gradient can flow (inside ``no_grad()``, or every input a constant) ``infer(*arrays,
*params)`` gives the output alone: ops whose forward does work only for backward override it.
"""

from __future__ import annotations

import numpy as np

from autodiff.node import ComputationGraphNode, is_grad_enabled


def unbroadcast(grad: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Sum ``grad`` over the axes numpy broadcasting added or stretched, giving ``shape``."""
    if grad.shape == shape:
        return grad
    lead = grad.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(
        lead + i for i, n in enumerate(shape) if n == 1 and grad.shape[lead + i] != 1
    )
    return grad.sum(axis=axes, keepdims=True).reshape(shape)


def _lift(value, reference_dtype) -> ComputationGraphNode:
    """Wrap a constant as a node; python numbers and float arrays take the graph's float dtype."""
    if isinstance(value, ComputationGraphNode):
        return value
    if reference_dtype is not None and (
        isinstance(value, (int, float))
        or (isinstance(value, np.ndarray) and value.dtype.kind == "f")
    ):
        return ComputationGraphNode(np.asarray(value, dtype=reference_dtype))
    return ComputationGraphNode(value)


class Operation:
    """Base class of every op. Calling an instance applies it to nodes and records the graph.

    The first ``arity`` arguments are graph inputs (nodes, or constants wrapped as nodes); the
    rest are plain parameters passed on to ``forward`` (an index, an axis, ...).
    """

    arity = 1

    @staticmethod
    def forward(*args):
        raise NotImplementedError("Operation subclasses define forward(*arrays) -> (out, saved)")

    @staticmethod
    def backward(saved, g, needs):
        raise NotImplementedError("Operation subclasses define backward(saved, g, needs)")

    @classmethod
    def infer(cls, *args):
        """``forward``'s output alone, for when no gradient can flow back through this op."""
        return cls.forward(*args)[0]

    def __call__(self, *args) -> ComputationGraphNode:
        n = self.arity
        if len(args) < n:
            raise TypeError(f"{type(self).__name__} takes {n} inputs, got {len(args)}")
        inputs = args[:n]
        # this runs for every op of every step: the common case (all nodes) takes no detour
        for a in inputs:
            if not isinstance(a, ComputationGraphNode):
                inputs = _lift_all(inputs)
                break
        record = False  # a gradient can flow back: an input requires grad, outside no_grad()
        if is_grad_enabled():
            for i in inputs:
                if i.require_grad:
                    record = True
                    break
        try:
            if record:
                out, saved = self.forward(*[i.value for i in inputs], *args[n:])
            else:
                out = self.infer(*[i.value for i in inputs], *args[n:])
        except ValueError as exc:
            raise _named_error(self, inputs, exc) from exc
        node = ComputationGraphNode(out if type(out) is np.ndarray else np.asarray(out))
        if record:
            node.require_grad = True
            node.func = self
            node.input_nodes = inputs
            node.saved = saved
        return node


def _lift_all(inputs) -> tuple[ComputationGraphNode, ...]:
    """Wrap constants as nodes; python numbers and float arrays take the graph's float dtype."""
    reference = next(
        (a.value.dtype for a in inputs
         if isinstance(a, ComputationGraphNode) and a.value.dtype.kind == "f"),
        None,
    )
    return tuple(_lift(a, reference) for a in inputs)


def _named_error(op: Operation, inputs, exc: ValueError) -> ValueError:
    """The error of a failed forward, prefixed with the op's name and the input shapes."""
    name = type(op).__name__
    message = str(exc)
    if not message.startswith(name):
        shapes = ", ".join(str(i.value.shape) for i in inputs)
        message = f"{name}: {message} (input shapes {shapes})"
    return ValueError(message)


# -- elementwise arithmetic (numpy broadcasting; gradients reduced back with unbroadcast) -------
class Addition(Operation):
    """z = x + y;  dx = g,  dy = g (each unbroadcast to its operand's shape)"""

    arity = 2

    @staticmethod
    def forward(x, y):
        return x + y, (x.shape, y.shape)

    @staticmethod
    def backward(saved, g, needs):
        xs, ys = saved
        return (
            unbroadcast(g, xs) if needs[0] else None,
            unbroadcast(g, ys) if needs[1] else None,
        )


class Subtraction(Operation):
    """z = x - y;  dx = g,  dy = -g"""

    arity = 2

    @staticmethod
    def forward(x, y):
        return x - y, (x.shape, y.shape)

    @staticmethod
    def backward(saved, g, needs):
        xs, ys = saved
        return (
            unbroadcast(g, xs) if needs[0] else None,
            unbroadcast(-g, ys) if needs[1] else None,
        )


class Multiplication(Operation):
    """z = x * y;  dx = g * y,  dy = g * x"""

    arity = 2

    @staticmethod
    def forward(x, y):
        return x * y, (x, y)

    @staticmethod
    def backward(saved, g, needs):
        x, y = saved
        return (
            unbroadcast(g * y, x.shape) if needs[0] else None,
            unbroadcast(g * x, y.shape) if needs[1] else None,
        )


class Division(Operation):
    """z = x / y;  dx = g / y,  dy = -g * x / y**2"""

    arity = 2

    @staticmethod
    def forward(x, y):
        return x / y, (x, y)

    @staticmethod
    def backward(saved, g, needs):
        x, y = saved
        g_over_y = g / y
        return (
            unbroadcast(g_over_y, x.shape) if needs[0] else None,
            unbroadcast(-g_over_y * x / y, y.shape) if needs[1] else None,
        )


class Negation(Operation):
    """z = -x;  dx = -g"""

    @staticmethod
    def forward(x):
        return -x, None

    @staticmethod
    def backward(saved, g, needs):
        return (-g,)


class Power(Operation):
    """z = x ** p (p a constant number);  dx = g * p * x ** (p - 1)"""

    @staticmethod
    def forward(x, p):
        if isinstance(p, ComputationGraphNode) or np.ndim(p) != 0:
            raise TypeError(f"Power: the exponent must be a number, got {type(p).__name__}")
        return x**p, (x, p)

    @staticmethod
    def backward(saved, g, needs):
        x, p = saved
        return (g * p * x ** (p - 1),)


class MatMul(Operation):
    """z = x @ y;  dx = g @ y.T,  dy = x.T @ g (batch axes unbroadcast, 1-d operands as numpy)"""

    arity = 2

    @staticmethod
    def forward(x, y):
        return x @ y, (x, y)

    @staticmethod
    def backward(saved, g, needs):
        x, y = saved
        x2 = x[None, :] if x.ndim == 1 else x
        y2 = y[:, None] if y.ndim == 1 else y
        batch = np.broadcast_shapes(x2.shape[:-2], y2.shape[:-2])
        g2 = g.reshape(batch + (x2.shape[-2], y2.shape[-1]))
        dx = dy = None
        if needs[0]:
            dx = unbroadcast(g2 @ np.swapaxes(y2, -1, -2), x2.shape).reshape(x.shape)
        if needs[1]:
            dy = unbroadcast(np.swapaxes(x2, -1, -2) @ g2, y2.shape).reshape(y.shape)
        return dx, dy


# -- reductions and shape ----------------------------------------------------------------------
def _expand_reduced(g: np.ndarray, shape, axis, keepdims: bool) -> np.ndarray:
    """Broadcast the gradient of a reduction back to the reduced array's shape."""
    if axis is not None and not keepdims:
        axes = (axis,) if np.ndim(axis) == 0 else tuple(axis)
        g = np.expand_dims(g, tuple(a % len(shape) for a in axes))
    return np.broadcast_to(g, shape)


class Sum(Operation):
    """z = x.sum(axis);  dx = g broadcast back over the summed axes"""

    @staticmethod
    def forward(x, axis=None, keepdims=False):
        return x.sum(axis=axis, keepdims=keepdims), (x.shape, axis, keepdims)

    @staticmethod
    def backward(saved, g, needs):
        shape, axis, keepdims = saved
        return (np.array(_expand_reduced(g, shape, axis, keepdims)),)


class Mean(Operation):
    """z = x.mean(axis);  dx = g / n broadcast back over the averaged axes (n elements averaged)"""

    @staticmethod
    def forward(x, axis=None, keepdims=False):
        out = x.mean(axis=axis, keepdims=keepdims)
        count = x.size // max(np.size(out), 1) if x.size else 1
        return out, (x.shape, axis, keepdims, count)

    @staticmethod
    def backward(saved, g, needs):
        shape, axis, keepdims, count = saved
        return (_expand_reduced(g, shape, axis, keepdims) / count,)


class Reshape(Operation):
    """z = x.reshape(shape);  dx = g.reshape(x.shape)"""

    @staticmethod
    def forward(x, shape):
        return x.reshape(shape), x.shape

    @staticmethod
    def backward(saved, g, needs):
        return (g.reshape(saved),)


class Transpose(Operation):
    """z = x.transpose(axes);  dx = g.transpose(inverse of axes)"""

    @staticmethod
    def forward(x, axes=None):
        return x.transpose(axes), axes

    @staticmethod
    def backward(saved, g, needs):
        axes = saved
        return (g.transpose(None if axes is None else np.argsort(axes)),)


def _is_basic_index(key) -> bool:
    """True when ``key`` selects each element at most once (no integer or boolean arrays)."""
    parts = key if isinstance(key, tuple) else (key,)
    return all(isinstance(k, (int, np.integer, slice)) or k is None or k is Ellipsis for k in parts)


class Selection(Operation):
    """z = x[key];  dx = zeros with g scattered back at key (repeated indices accumulate)"""

    @staticmethod
    def forward(x, key):
        if isinstance(key, ComputationGraphNode):
            key = key.value
        return x[key], (x.shape, x.dtype, key)

    @staticmethod
    def backward(saved, g, needs):
        shape, dtype, key = saved
        dx = np.zeros(shape, dtype=dtype)
        if _is_basic_index(key):
            dx[key] = g
        else:
            np.add.at(dx, key, g)
        return (dx,)


# -- activations -------------------------------------------------------------------------------
class ReLU(Operation):
    """y = max(x, 0);  dx = g where y > 0, else 0"""

    @staticmethod
    def forward(x):
        y = np.maximum(x, 0)
        return y, y

    @staticmethod
    def backward(saved, g, needs):
        return (g * (saved > 0),)


class TanH(Operation):
    """y = tanh(x) (numpy's, stable for any |x|);  dx = g * (1 - y**2)"""

    @staticmethod
    def forward(x):
        y = np.tanh(x)
        return y, y

    @staticmethod
    def backward(saved, g, needs):
        return (g * (1 - saved * saved),)


class Sigmoid(Operation):
    """y = 1 / (1 + exp(-x)) (no overflow: exp of -|x| only);  dx = g * y * (1 - y)"""

    @staticmethod
    def forward(x):
        e = np.exp(-np.abs(x))
        y = np.where(x >= 0, 1 / (1 + e), e / (1 + e))
        return y, y

    @staticmethod
    def backward(saved, g, needs):
        return (g * saved * (1 - saved),)


class Exp(Operation):
    """y = exp(x);  dx = g * y"""

    @staticmethod
    def forward(x):
        y = np.exp(x)
        return y, y

    @staticmethod
    def backward(saved, g, needs):
        return (g * saved,)


class Log(Operation):
    """y = log(x);  dx = g / x"""

    @staticmethod
    def forward(x):
        return np.log(x), x

    @staticmethod
    def backward(saved, g, needs):
        return (g / saved,)


# -- layers and losses -------------------------------------------------------------------------
class affine_transform(Operation):  # noqa: N801 - the lab's name
    """y = x @ W + b;  dW = x.T @ g,  db = g.sum(0),  dx = g @ W.T"""

    arity = 3

    @staticmethod
    def forward(W, b, x):  # noqa: N803
        if x.ndim != 2 or W.ndim != 2 or x.shape[1] != W.shape[0]:
            raise ValueError(
                f"affine_transform: x @ W needs x (N, {W.shape[0] if W.ndim == 2 else '?'}), "
                f"got x {x.shape} and W {W.shape}"
            )
        if b.shape[-1] != W.shape[1] or b.size != W.shape[1]:
            raise ValueError(
                f"affine_transform: b must hold {W.shape[1]} values for W {W.shape}, "
                f"got b {b.shape}"
            )
        y = x @ W
        y += b
        return y, (W, b.shape, x)

    @staticmethod
    def backward(saved, g, needs):
        W, b_shape, x = saved  # noqa: N806
        return (
            x.T @ g if needs[0] else None,
            g.sum(axis=0).reshape(b_shape) if needs[1] else None,
            g @ W.T if needs[2] else None,
        )


def _log_softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """log softmax with the max subtracted first, so no exp overflows."""
    shifted = x - x.max(axis=axis, keepdims=True)
    shifted -= np.log(np.exp(shifted).sum(axis=axis, keepdims=True))
    return shifted


def _labels(y: np.ndarray, n: int, classes: int, op: str) -> np.ndarray:
    """Integer class labels as shape (n,), checked against the logits."""
    labels = y.reshape(-1)
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind != "f" or not np.all(np.mod(labels, 1) == 0):
            raise ValueError(f"{op}: labels must be integers, got dtype {y.dtype}")
        labels = labels.astype(np.int64)
    if labels.shape[0] != n:
        raise ValueError(f"{op}: {n} rows of logits but {labels.shape[0]} labels (shape {y.shape})")
    if n and (labels.min() < 0 or labels.max() >= classes):
        bad = labels[(labels < 0) | (labels >= classes)][0]
        raise ValueError(f"{op}: label {bad} out of range for {classes} classes")
    return labels


def _softmax_nll(x: np.ndarray, y: np.ndarray, op: str):
    """Per-sample -log softmax(x)[y], with the softmax and labels that the backward pass needs."""
    if x.ndim != 2:
        raise ValueError(f"{op}: logits must be (N, classes), got shape {x.shape}")
    labels = _labels(y, x.shape[0], x.shape[1], op)
    shifted = x - x.max(axis=1, keepdims=True)  # no exp overflows
    probs = np.exp(shifted)
    sums = probs.sum(axis=1, keepdims=True)
    rows = np.arange(x.shape[0])
    losses = np.log(sums[:, 0]) - shifted[rows, labels]
    probs /= sums
    return losses, (probs, rows, labels)


def _softmax_minus_onehot(saved, scale) -> np.ndarray:
    """(softmax - onehot) * scale, the gradient of the cross-entropy with respect to the logits."""
    probs, rows, labels = saved
    d = probs * scale
    d[rows, labels] -= scale if np.ndim(scale) == 0 else scale[:, 0]
    return d


class log_softmax(Operation):  # noqa: N801 - lower case like the lab's nll
    """y = x - logsumexp(x, axis);  dx = g - softmax(x) * g.sum(axis)"""

    @staticmethod
    def forward(x, axis=-1):
        y = _log_softmax(x, axis)
        return y, (np.exp(y), axis)

    @staticmethod
    def infer(x, axis=-1):  # without the softmax that only backward uses
        return _log_softmax(x, axis)

    @staticmethod
    def backward(saved, g, needs):
        softmax, axis = saved
        return (g - softmax * g.sum(axis=axis, keepdims=True),)


class nll(Operation):  # noqa: N801 - the lab's name
    """loss_i = logsumexp(x_i) - x_i[y_i] (per sample);  dx = (softmax - onehot) * g[:, None]"""

    arity = 2

    @staticmethod
    def forward(x, y):
        return _softmax_nll(x, y, "nll")

    @staticmethod
    def backward(saved, g, needs):
        return _softmax_minus_onehot(saved, g[:, None]), None


class cross_entropy(Operation):  # noqa: N801 - lower case like the lab's nll
    """loss = mean_i nll(x, y)_i (fused softmax + nll);  dx = (softmax - onehot) * g / N"""

    arity = 2

    @staticmethod
    def forward(x, y):
        losses, saved = _softmax_nll(x, y, "cross_entropy")
        return losses.sum() / max(len(losses), 1), saved

    @staticmethod
    def backward(saved, g, needs):
        n = max(saved[0].shape[0], 1)
        return _softmax_minus_onehot(saved, g / n), None
