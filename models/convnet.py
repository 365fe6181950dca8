"""ConvNetwork: conv → ReLU → max-pool blocks, then a DenseStack: ReLU layers, linear output."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from autodiff import ComputationGraphNode, Conv2d, MaxPool2d, Parameter, ReLU
from models.init import kaiming_init, zero_init
from models.module import Module, ModuleList
from models.networks import DenseStack, positive_int


class ConvLayer(Module):
    """One convolution's parameters: W (out_channels, in_channels, k, k) and b (out_channels,)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int,
                 rng: np.random.Generator | None = None, dtype=np.float32):
        self.padding = padding
        shape = (out_channels, in_channels, kernel_size, kernel_size)
        self.W = Parameter(np.empty(shape, dtype=dtype), name="W")
        self.b = Parameter(np.empty(out_channels, dtype=dtype), name="b")
        self.init_parameters(rng)

    def init_parameters(self, rng: np.random.Generator | None = None) -> None:
        """Kaiming weights (fan_in = in_channels·k·k; the layer is followed by ReLU), zero bias."""
        # the (fan_in, out) view of W is what kaiming_init expects; it writes through to W
        kaiming_init(self.W.value.reshape(len(self.W.value), -1).T, rng)
        zero_init(self.b.value)

    def forward(self, x) -> ComputationGraphNode:
        return Conv2d()(x, self.W, self.b, 1, self.padding)


def _sizes(values, name: str, count: int | None = None, minimum: int = 1) -> list[int]:
    """A list of ints >= minimum (of ``count`` entries when given), for JSON-able configs."""
    values = [values] if np.ndim(values) == 0 else list(values)
    if count is not None and len(values) != count:
        raise ValueError(f"{name} needs {count} entries (one per conv layer), got {values!r}")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
            raise ValueError(f"{name} must hold integers >= {minimum}, got {values!r}")
    return [int(v) for v in values]


def _feature_size(image_size: int, kernel_sizes: list[int], paddings: list[int], pool: int) -> int:
    """The side of the feature maps after the conv (stride 1) and pooling blocks."""
    size = image_size
    for i, (k, p) in enumerate(zip(kernel_sizes, paddings)):
        size = (size + 2 * p - k + 1) // pool
        if size < 1:
            raise ValueError(
                f"conv layer {i} (kernel {k}, padding {p}, pool {pool}) leaves no pixels of a "
                f"{image_size}x{image_size} image: use smaller kernels, more padding or fewer "
                "layers"
            )
    return size


class ConvNetwork(Module):
    """Conv (stride 1) → ReLU → max-pool (pool x pool) blocks, hidden ReLU layers, linear output.

    ``forward`` takes flat (N, C·H·W) rows, as ``models.to_model_input`` returns them, or
    (N, C, H, W) batches. The defaults are a LeNet-5-like net: 6 and 16 5x5 filters, 120-84.
    """

    def __init__(self, dim_output: int = 10, in_channels: int = 1, image_size: int = 28,
                 channels: Sequence[int] = (6, 16), kernel_sizes: Sequence[int] = (5, 5),
                 paddings: Sequence[int] = (2, 0), pool: int = 2,
                 hidden_dims: Sequence[int] = (120, 84),
                 rng: np.random.Generator | None = None, dtype=np.float32):
        self.dim_output = positive_int(dim_output, "dim_output")
        self.in_channels = positive_int(in_channels, "in_channels")
        self.image_size = positive_int(image_size, "image_size")
        self.channels = _sizes(channels, "channels")
        self.kernel_sizes = _sizes(kernel_sizes, "kernel_sizes", len(self.channels))
        self.paddings = _sizes(paddings, "paddings", len(self.channels), minimum=0)
        self.pool = positive_int(pool, "pool")
        self.hidden_dims = _sizes(hidden_dims, "hidden_dims")
        self.feature_size = _feature_size(self.image_size, self.kernel_sizes, self.paddings,
                                          self.pool)
        widths = [self.in_channels] + self.channels
        self.convs = ModuleList(
            ConvLayer(widths[i], widths[i + 1], k, p, rng=rng, dtype=dtype)
            for i, (k, p) in enumerate(zip(self.kernel_sizes, self.paddings))
        )
        size = self.feature_size
        sizes = [widths[-1] * size * size] + self.hidden_dims + [self.dim_output]
        self.layers = DenseStack(sizes, rng=rng, dtype=dtype)
        self.init_parameters(rng)

    @staticmethod
    def parameter_count(dim_output: int = 10, in_channels: int = 1, image_size: int = 28,
                        channels: Sequence[int] = (6, 16), kernel_sizes: Sequence[int] = (5, 5),
                        paddings: Sequence[int] = (2, 0), pool: int = 2,
                        hidden_dims: Sequence[int] = (120, 84)) -> int:
        """Parameters of ``ConvNetwork(...)`` with these arguments, without building it."""
        widths = [positive_int(in_channels, "in_channels"), *_sizes(channels, "channels")]
        kernels = _sizes(kernel_sizes, "kernel_sizes", len(widths) - 1)
        size = _feature_size(positive_int(image_size, "image_size"), kernels,
                             _sizes(paddings, "paddings", len(kernels), minimum=0),
                             positive_int(pool, "pool"))
        convs = sum((a * k * k + 1) * b for a, b, k in zip(widths[:-1], widths[1:], kernels))
        dense = [widths[-1] * size * size, *_sizes(hidden_dims, "hidden_dims"),
                 positive_int(dim_output, "dim_output")]
        return convs + DenseStack.parameter_count(dense)

    def init_parameters(self, rng: np.random.Generator | None = None) -> None:
        """Kaiming for every layer followed by ReLU, Glorot for the output layer, zero biases."""
        for conv in self.convs:
            conv.init_parameters(rng)
        self.layers.init_parameters(rng)

    def _as_images(self, x) -> ComputationGraphNode:
        """x as an (N, C, H, W) node of the parameters' dtype."""
        shape = (self.in_channels, self.image_size, self.image_size)
        size = self.in_channels * self.image_size**2  # not np.prod: 3 µs a call, at batch 1 too
        if not isinstance(x, ComputationGraphNode):
            x = np.asarray(x, dtype=self.layers[0].W.value.dtype)
            if x.ndim == 2 and x.shape[1] == size:
                x = x.reshape((-1,) + shape)
            x = ComputationGraphNode(x)
        elif x.ndim == 2 and x.shape[1] == size:
            x = x.reshape((-1,) + shape)
        if x.shape[1:] != shape:
            raise ValueError(
                f"ConvNetwork expects images (N, {', '.join(map(str, shape))}) or flat rows "
                f"(N, {size}), got shape {x.shape}"
            )
        return x

    def forward(self, x) -> ComputationGraphNode:
        """Logits (N, dim_output)."""
        x = self._as_images(x)
        for conv in self.convs:
            x = conv(x)
            if self.pool > 1:  # pooling first is the same (max commutes with ReLU), and cheaper
                x = MaxPool2d()(x, self.pool)
            x = ReLU()(x)
        return self.layers(x.reshape(x.shape[0], -1))

    def config(self) -> dict:
        """Constructor arguments: ``build(config)`` makes the same architecture."""
        return {"class": "ConvNetwork", "dim_output": self.dim_output,
                "in_channels": self.in_channels, "image_size": self.image_size,
                "channels": list(self.channels), "kernel_sizes": list(self.kernel_sizes),
                "paddings": list(self.paddings), "pool": self.pool,
                "hidden_dims": list(self.hidden_dims)}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "class")
        return f"ConvNetwork({args})"

