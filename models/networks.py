"""The lab's networks: LinearNetwork and DeepNetwork, each rebuildable from its config()."""

from __future__ import annotations

import numpy as np

from autodiff import ComputationGraphNode, Parameter, ReLU, TanH, affine_transform
from models.init import glorot_init, kaiming_init, zero_init
from models.module import Module, ModuleList

#: Parameters a model file may declare: checked before its network is built, so that a small
#: file cannot make a loader allocate gigabytes (64 MB in float32; our models have < 1 M).
MAX_PARAMETERS = 16_000_000


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _dense_count(sizes: list[int]) -> int:
    """Parameters of linear layers sizes[0] -> sizes[1] -> ...: weights and biases."""
    return sum((a + 1) * b for a, b in zip(sizes[:-1], sizes[1:]))


class LinearNetwork(Module):
    """y = x @ W + b with W (dim_input, dim_output) and b (1, dim_output)."""

    def __init__(self, dim_input: int, dim_output: int, rng: np.random.Generator | None = None,
                 dtype=np.float32):
        self.dim_input = _positive_int(dim_input, "dim_input")
        self.dim_output = _positive_int(dim_output, "dim_output")
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
        return _dense_count([_positive_int(dim_input, "dim_input"),
                             _positive_int(dim_output, "dim_output")])

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


class DeepNetwork(Module):
    """n_layers hidden layers of hidden_dim units (ReLU, or tanh), then a linear output layer."""

    def __init__(self, dim_input: int, dim_output: int, hidden_dim: int, n_layers: int,
                 tanh: bool = False, rng: np.random.Generator | None = None, dtype=np.float32):
        self.dim_input = _positive_int(dim_input, "dim_input")
        self.dim_output = _positive_int(dim_output, "dim_output")
        self.hidden_dim = _positive_int(hidden_dim, "hidden_dim")
        self.n_layers = _positive_int(n_layers, "n_layers")
        self.use_tanh = bool(tanh)
        sizes = [self.dim_input] + [self.hidden_dim] * self.n_layers + [self.dim_output]
        self.layers = ModuleList(
            LinearNetwork(a, b, rng=rng, dtype=dtype) for a, b in zip(sizes[:-1], sizes[1:])
        )
        self.init_parameters(rng)

    @staticmethod
    def parameter_count(dim_input: int, dim_output: int, hidden_dim: int, n_layers: int,
                        tanh: bool = False) -> int:
        """Parameters of ``DeepNetwork(...)`` with these arguments, without building it."""
        hidden = _positive_int(hidden_dim, "hidden_dim")
        inner = (_positive_int(n_layers, "n_layers") - 1) * (hidden + 1) * hidden
        return inner + _dense_count([_positive_int(dim_input, "dim_input"), hidden,
                                     _positive_int(dim_output, "dim_output")])

    def init_parameters(self, rng: np.random.Generator | None = None) -> None:
        """Kaiming for layers followed by ReLU, Glorot for tanh layers and the output layer."""
        for i, layer in enumerate(self.layers):
            hidden = i < len(self.layers) - 1
            layer.init_parameters(rng, relu=hidden and not self.use_tanh)

    def forward(self, x) -> ComputationGraphNode:
        """Logits: (linear, activation) for each hidden layer, then the output layer."""
        activation = TanH if self.use_tanh else ReLU
        for layer in self.layers[:-1]:
            x = activation()(layer.forward(x))
        return self.layers[-1].forward(x)

    def config(self) -> dict:
        """Constructor arguments: ``build(config)`` makes the same architecture."""
        return {"class": "DeepNetwork", "dim_input": self.dim_input,
                "dim_output": self.dim_output, "hidden_dim": self.hidden_dim,
                "n_layers": self.n_layers, "tanh": self.use_tanh}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "class")
        return f"DeepNetwork({args})"


# models.convnet adds ConvNetwork here when it is imported (always, by models/__init__.py):
# it builds on LinearNetwork, so importing it from this module would be circular
NETWORKS = {cls.__name__: cls for cls in (LinearNetwork, DeepNetwork)}


def parameter_count(config: dict) -> int:
    """The number of parameters the network a ``config()`` describes has, without building it;
    ValueError for a config ``build`` would refuse, or one of more than MAX_PARAMETERS."""
    if not isinstance(config, dict) or config.get("class") not in NETWORKS:
        known = ", ".join(NETWORKS)
        raise ValueError(f"unknown architecture {config!r}: expected a dict with class in {known}")
    kwargs = {k: v for k, v in config.items() if k != "class"}
    try:
        count = NETWORKS[config["class"]].parameter_count(**kwargs)
    except TypeError as exc:
        raise ValueError(f"invalid {config['class']} config {kwargs}: {exc}") from exc
    if count > MAX_PARAMETERS:
        raise ValueError(f"{config['class']} with {count:,} parameters: more than the "
                         f"{MAX_PARAMETERS:,} a model may have")
    return count


def build(config: dict, rng: np.random.Generator | None = None, dtype=np.float32) -> Module:
    """The network a ``config()`` describes (freshly initialised); its size is checked first
    (``parameter_count``)."""
    parameter_count(config)
    kwargs = {k: v for k, v in config.items() if k != "class"}
    try:
        return NETWORKS[config["class"]](**kwargs, rng=rng, dtype=dtype)
    except TypeError as exc:
        raise ValueError(f"invalid {config['class']} config {kwargs}: {exc}") from exc
