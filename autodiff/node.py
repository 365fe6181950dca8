"""Graph nodes, the gradient switch, and reverse-mode backward over a topological order."""

from __future__ import annotations

import threading

import numpy as np

#: dtype given to data that is not already a floating numpy array (python floats, lists).
DEFAULT_DTYPE = np.float32

_state = threading.local()  # per thread, so a server thread in no_grad() does not affect another


def is_grad_enabled() -> bool:
    """True unless the current thread is inside ``no_grad()``."""
    return getattr(_state, "grad_enabled", True)


class no_grad:  # noqa: N801 - used like a function (``with no_grad():``), as in torch
    """Record no graph inside the block: outputs are constants, nothing is saved for backward.

    A class, not a ``@contextmanager`` generator: entering and leaving cost 0.3 µs instead of
    1.2, a few percent of a batch-1 forward pass of a small MLP.
    """

    __slots__ = ("previous",)

    def __enter__(self) -> None:
        self.previous = is_grad_enabled()
        _state.grad_enabled = False

    def __exit__(self, *exc_info) -> None:
        _state.grad_enabled = self.previous


def as_array(data, dtype=None) -> np.ndarray:
    """numpy arrays keep their dtype; python floats and lists become float32 (``DEFAULT_DTYPE``)."""
    if isinstance(data, np.ndarray):
        return data if dtype is None else data.astype(dtype, copy=False)
    array = np.asarray(data, dtype=dtype)
    if dtype is None and array.dtype == np.float64:
        array = array.astype(DEFAULT_DTYPE)
    return array


class ComputationGraphNode:
    """A value in the graph: ``.value`` (numpy), ``.grad``, ``.require_grad``, ``.backward()``.

    Nodes built by an ``Operation`` remember the operation, their inputs and what the backward
    pass needs (saved at forward time). ``require_grad`` propagates from inputs to outputs.
    """

    __slots__ = ("value", "grad", "require_grad", "func", "input_nodes", "saved", "__weakref__")
    __array_ufunc__ = None  # make `ndarray + node` call node.__radd__ instead of looping in numpy

    def __init__(self, data, require_grad: bool = False):
        self.value = data if type(data) is np.ndarray else as_array(data)  # ops' outputs: no call
        if require_grad and not np.issubdtype(self.value.dtype, np.floating):
            raise TypeError(
                f"require_grad=True needs floating-point data, got dtype {self.value.dtype}"
            )
        self.grad = None
        self.require_grad = bool(require_grad)
        self.func = None  # the Operation that produced this node; None for leaves
        self.input_nodes = ()
        self.saved = None

    # -- gradients -------------------------------------------------------------------------
    def zero_grad(self) -> None:
        """Forget the accumulated gradient (the next backward starts from zero)."""
        self.grad = None

    def backward(self, g=None) -> None:
        """Reverse-mode differentiation from this node.

        ``g`` is the gradient of the final scalar with respect to this node (ones if omitted,
        as in the lab). Every node that requires grad and feeds this one receives its gradient;
        leaves (parameters, inputs with ``require_grad=True``) accumulate it in ``.grad``.
        """
        if not self.require_grad:
            raise RuntimeError(
                "backward() on a node that does not require grad: no input of this graph has "
                "require_grad=True (or it was built inside no_grad())"
            )
        order = self._topological_order()
        for node, node_grad in _propagate(order, self._seed(g), None):
            if node.func is None:
                node.grad = node_grad if node.grad is None else node.grad + node_grad
            else:
                node.grad = node_grad  # intermediate nodes keep this pass's (the lab's did too)

    def _seed(self, g) -> np.ndarray:
        """The output gradient that starts a backward pass: ``g`` checked, or ones."""
        if g is None:
            return np.ones_like(self.value)
        g = np.asarray(g, dtype=self.value.dtype)
        if g.shape != self.value.shape:
            raise ValueError(
                f"backward(): gradient shape {g.shape} does not match node shape "
                f"{self.value.shape}"
            )
        return g

    def _topological_order(self) -> list[ComputationGraphNode]:
        """Nodes that require grad and lead to self, each once, inputs before outputs."""
        order = []
        visited = set()
        stack = [(self, False)]
        while stack:
            node, expanded = stack.pop()
            if expanded:
                order.append(node)
                continue
            if node in visited:
                continue
            visited.add(node)
            stack.append((node, True))
            for inp in node.input_nodes:
                if inp.require_grad and inp not in visited:
                    stack.append((inp, False))
        return order

    # -- array-like properties ---------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self.value.shape

    @property
    def ndim(self) -> int:
        return self.value.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.value.dtype

    @property
    def T(self) -> ComputationGraphNode:  # noqa: N802 - numpy's name
        return _ops.Transpose()(self)

    def __len__(self) -> int:
        return len(self.value)

    def __str__(self) -> str:
        return str(self.value)

    def __repr__(self) -> str:
        grad = ", require_grad=True" if self.require_grad else ""
        return f"{type(self).__name__}({self.value!r}{grad})"

    # -- operators ----------------------------------------------------------------------------
    def __add__(self, other):
        return _ops.Addition()(self, other)

    def __radd__(self, other):
        return _ops.Addition()(other, self)

    def __sub__(self, other):
        return _ops.Subtraction()(self, other)

    def __rsub__(self, other):
        return _ops.Subtraction()(other, self)

    def __mul__(self, other):
        return _ops.Multiplication()(self, other)

    def __rmul__(self, other):
        return _ops.Multiplication()(other, self)

    def __truediv__(self, other):
        return _ops.Division()(self, other)

    def __rtruediv__(self, other):
        return _ops.Division()(other, self)

    def __matmul__(self, other):
        return _ops.MatMul()(self, other)

    def __rmatmul__(self, other):
        return _ops.MatMul()(other, self)

    def __neg__(self):
        return _ops.Negation()(self)

    def __pow__(self, exponent):
        return _ops.Power()(self, exponent)

    def __getitem__(self, key):
        return _ops.Selection()(self, key)

    def sum(self, axis=None, keepdims: bool = False):
        return _ops.Sum()(self, axis, keepdims)

    def mean(self, axis=None, keepdims: bool = False):
        return _ops.Mean()(self, axis, keepdims)

    def reshape(self, *shape):
        if len(shape) == 1 and isinstance(shape[0], (tuple, list)):
            shape = tuple(shape[0])
        return _ops.Reshape()(self, shape)


def _propagate(order, g, wanted):
    """Walk ``order`` (inputs before outputs, the output last) in reverse from the output's
    gradient ``g``, yielding each node with its complete gradient. Gradients go only to inputs
    that require grad and, unless ``wanted`` is None, are in ``wanted``."""
    grads = {order[-1]: g}
    for node in reversed(order):
        g = grads.pop(node)
        yield node, g
        if node.func is None:
            continue
        inputs = node.input_nodes
        needs = [inp.require_grad and (wanted is None or inp in wanted) for inp in inputs]
        input_grads = node.func.backward(node.saved, g, needs)
        for inp, need, ig in zip(inputs, needs, input_grads):
            if not need:
                continue
            if ig.shape != inp.value.shape:
                raise ValueError(
                    f"{type(node.func).__name__}.backward returned a gradient of shape "
                    f"{ig.shape} for an input of shape {inp.value.shape}"
                )
            if ig.dtype != inp.value.dtype:
                ig = ig.astype(inp.value.dtype)
            previous = grads.get(inp)
            # never add in place: `ig` may be shared with another input (x + x)
            grads[inp] = ig if previous is None else previous + ig


def grad(output: ComputationGraphNode, inputs, g=None) -> list[np.ndarray]:
    """Gradients of ``output`` (seeded with ``g``, ones if omitted) with respect to ``inputs``.

    As ``torch.autograd.grad``: only what leads to ``inputs`` is computed (a network's weight
    gradients are skipped when the inputs are its images), and nothing is written to any
    ``.grad``, so a model shared between threads is only read.
    """
    inputs = list(inputs)
    for i, node in enumerate(inputs):
        if not (isinstance(node, ComputationGraphNode) and node.require_grad):
            raise ValueError(f"grad(): inputs[{i}] is not a node with require_grad=True")
    if not output.require_grad:
        raise RuntimeError("grad(): the output does not require grad (built inside no_grad()?)")
    order = output._topological_order()
    # the nodes from which an input can be reached, in order: the only ones backward visits
    targets = set(inputs)
    reaches = set(targets)
    for node in order:
        if node not in reaches and any(inp in reaches for inp in node.input_nodes):
            reaches.add(node)
    found = {}
    if output in reaches:
        order = [node for node in order if node in reaches]
        for node, node_grad in _propagate(order, output._seed(g), reaches):
            if node in targets:  # keep no other gradient: intermediate ones are freed as we go
                found[node] = node_grad
    for i, node in enumerate(inputs):
        if node not in found:
            raise ValueError(f"grad(): inputs[{i}] is not used to compute the output")
    return [found[node] for node in inputs]


class Parameter(ComputationGraphNode):
    """A trainable leaf: always requires grad; ``name`` is informative only."""

    __slots__ = ("name",)

    def __init__(self, data, name: str = "default"):
        super().__init__(data, require_grad=True)
        self.name = name

    def __repr__(self) -> str:
        return f"Parameter(name={self.name!r}, shape={self.value.shape}, dtype={self.value.dtype})"


from autodiff import ops as _ops  # noqa: E402  (ops builds nodes; nodes' operators build ops)
