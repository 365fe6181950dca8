"""The lab's networks, LinearNetwork and DeepNetwork, each rebuildable from its config(), and
DenseStack, the fully-connected ReLU (or tanh) layers of DeepNetwork and ConvNetwork."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autodiff import ComputationGraphNode, Parameter, ReLU, TanH, affine_transform
from models.init import glorot_init, kaiming_init, zero_init
from models.module import Module, ModuleList


def positive_int(value, name: str) -> int:
    """``value`` as an int >= 1 (numpy integers too, bools not); ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


class LinearNetwork(Module):
    """y = x @ W + b with W (dim_input, dim_output) and b (1, dim_output)."""

    def __init__(self, dim_input: int, dim_output: int, rng: np.random.Generator | None = None,
                 dtype=np.float32):
        self.dim_input = positive_int(dim_input, "dim_input")
        self.dim_output = positive_int(dim_output, "dim_output")
        self.W = Parameter(np.empty((self.dim_input, self.dim_output), dtype=dtype), name="W")
        self.b = Parameter(np.empty((1, self.dim_output), dtype=dtype), name="b")
        self.init_parameters(rng)

    def init_parameters(self, rng: np.random.Generator | None = None, relu: bool = False) -> None:
        """Glorot weights (Kaiming with ``relu=True``, for a layer followed by ReLU), zero bias."""
        (kaiming_init if relu else glorot_init)(self.W.value, rng)
        zero_init(self.b.value)

    @staticmethod
    def parameter_count(dim_input: int, dim_output: int) -> int:
        """Parameters of ``LinearNetwork(dim_input, dim_output)``, without building it."""
        return DenseStack.parameter_count([positive_int(dim_input, "dim_input"),
                                           positive_int(dim_output, "dim_output")])

    def forward(self, x) -> ComputationGraphNode:
        if not isinstance(x, ComputationGraphNode):
            x = ComputationGraphNode(np.asarray(x, dtype=self.W.value.dtype))
        return affine_transform()(self.W, self.b, x)

    def config(self) -> dict:
        """Constructor arguments: ``build(config)`` makes the same architecture."""
        return {"class": "LinearNetwork", "dim_input": self.dim_input,
                "dim_output": self.dim_output}

    def __repr__(self) -> str:
        return f"LinearNetwork(dim_input={self.dim_input}, dim_output={self.dim_output})"


class DenseStack(ModuleList):
    """Linear layers of widths ``sizes`` (input first, output last), ReLU (or tanh) between them.

    A ModuleList of LinearNetworks, so that a network holding it as ``layers`` names its
    parameters ``layers.0.W``, ``layers.0.b``, ... as model files always have. Each layer starts
    Glorot-initialised; the owning network calls ``init_parameters`` once all its layers exist,
    which keeps the order in which a seed's generator is drawn (and so the arrays) unchanged.
    """

    def __init__(self, sizes: Sequence[int], tanh: bool = False,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        super().__init__(LinearNetwork(a, b, rng=rng, dtype=dtype)
                         for a, b in zip(sizes[:-1], sizes[1:]))
        self.tanh = bool(tanh)

    @staticmethod
    def parameter_count(sizes: Sequence[int]) -> int:
        """Parameters of ``DenseStack(sizes)``: weights and biases, without building it."""
        return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))

    def init_parameters(self, rng: np.random.Generator | None = None) -> None:
        """Kaiming for layers followed by ReLU, Glorot for tanh layers and the output layer."""
        for i, layer in enumerate(self):
            hidden = i < len(self) - 1
            layer.init_parameters(rng, relu=hidden and not self.tanh)

    def forward(self, x) -> ComputationGraphNode:
        """(linear, activation) for each hidden layer, then the output layer."""
        activation = TanH if self.tanh else ReLU
        for layer in self[:-1]:
            x = activation()(layer(x))
        return self[-1](x)

    def __repr__(self) -> str:
        return "DenseStack([" + ", ".join(repr(m) for m in self) + f"], tanh={self.tanh})"


class DeepNetwork(Module):
    """n_layers hidden layers of hidden_dim units (ReLU, or tanh), then a linear output layer."""

    def __init__(self, dim_input: int, dim_output: int, hidden_dim: int, n_layers: int,
                 tanh: bool = False, rng: np.random.Generator | None = None, dtype=np.float32):
        self.dim_input = positive_int(dim_input, "dim_input")
        self.dim_output = positive_int(dim_output, "dim_output")
        self.hidden_dim = positive_int(hidden_dim, "hidden_dim")
        self.n_layers = positive_int(n_layers, "n_layers")
        sizes = [self.dim_input] + [self.hidden_dim] * self.n_layers + [self.dim_output]
        self.layers = DenseStack(sizes, tanh, rng=rng, dtype=dtype)
        self.init_parameters(rng)

    @staticmethod
    def parameter_count(dim_input: int, dim_output: int, hidden_dim: int, n_layers: int,
                        tanh: bool = False) -> int:
        """Parameters of ``DeepNetwork(...)`` with these arguments, without building it."""
        hidden = positive_int(hidden_dim, "hidden_dim")
        inner = (positive_int(n_layers, "n_layers") - 1) * (hidden + 1) * hidden
        return inner + DenseStack.parameter_count([positive_int(dim_input, "dim_input"), hidden,
                                                   positive_int(dim_output, "dim_output")])

    @property
    def use_tanh(self) -> bool:
        """The lab's name: the hidden layers use tanh (else ReLU)."""
        return self.layers.tanh

    def init_parameters(self, rng: np.random.Generator | None = None) -> None:
        """Kaiming for layers followed by ReLU, Glorot for tanh layers and the output layer."""
        self.layers.init_parameters(rng)

    def forward(self, x) -> ComputationGraphNode:
        """Logits: (linear, activation) for each hidden layer, then the output layer."""
        return self.layers(x)

    def config(self) -> dict:
        """Constructor arguments: ``build(config)`` makes the same architecture."""
        return {"class": "DeepNetwork", "dim_input": self.dim_input,
                "dim_output": self.dim_output, "hidden_dim": self.hidden_dim,
                "n_layers": self.n_layers, "tanh": self.use_tanh}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "class")
        return f"DeepNetwork({args})"
