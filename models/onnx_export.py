"""Export a model file to ONNX: ``python -m models.onnx_export model.npz model.onnx``.

The graph takes what the V2 ``digitgrad`` model takes, ``pixels`` float32 [N, 28, 28] in
[0, 1], ink bright on black, and applies the normalisation recorded in the model file itself,
so a runtime (onnxruntime, Triton, KServe) needs nothing but the .onnx file. Outputs:
``probabilities`` float32 [N, 10] (softmax) and ``digit`` int64 [N] (argmax). A model file
with a "not a digit" decision (models.decision) exports it too: the temperature, the
probabilities of the ten digits (a softmax over all eleven outputs, the last left out),
``is_digit`` bool [N] (the threshold on the log-odds of "a digit") and ``digit_probability``
float32 [N], exactly as the server answers. Needs the optional ``onnx`` package:
``pip install 'digitgrad[onnx]'``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

from models.archive import ModelFileError
from models.convnet import ConvNetwork
from models.decision import DIGITS, Decision
from models.module import Module
from models.networks import DeepNetwork, DenseStack, LinearNetwork
from models.preprocessing import INPUT_SHAPE
from models.serialization import load

try:
    import onnx
    from onnx import TensorProto, helper, numpy_helper
except ImportError:  # pragma: no cover - only without the extra
    onnx = None

#: ONNX opset: 13 has Softmax over one axis and every op used here.
OPSET = 13
INPUT, PROBABILITIES, DIGIT = "pixels", "probabilities", "digit"
IS_DIGIT, DIGIT_PROBABILITY = "is_digit", "digit_probability"


class GraphBuilder:
    """Nodes and initializers of one graph, each output named uniquely."""

    def __init__(self):
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def _name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, array: np.ndarray) -> str:
        """An initializer holding ``array`` (float32 unless it is an integer array)."""
        array = np.asarray(array)
        if array.dtype.kind == "f":
            array = array.astype(np.float32)
        name = self._name(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
        """Add one node; its output's name."""
        output = output or self._name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [output], **attrs))
        return output


def _linear(g: GraphBuilder, layer: LinearNetwork, x: str, prefix: str) -> str:
    """x @ W + b as one Gemm (W is stored (in, out), as Gemm's B)."""
    return g.op("Gemm", [x, g.constant(f"{prefix}.W", layer.W.value),
                         g.constant(f"{prefix}.b", layer.b.value.reshape(-1))])


def _linear_network(g: GraphBuilder, module: LinearNetwork, x: str) -> str:
    return _linear(g, module, x, "W")


def _dense_stack(g: GraphBuilder, layers: DenseStack, x: str) -> str:
    """A network's ``layers``: one Gemm per layer, Relu (or Tanh) between them."""
    activation = "Tanh" if layers.tanh else "Relu"
    for i, layer in enumerate(layers):
        x = _linear(g, layer, x, f"layers.{i}")
        if i < len(layers) - 1:
            x = g.op(activation, [x])
    return x


def _deep_network(g: GraphBuilder, module: DeepNetwork, x: str) -> str:
    return _dense_stack(g, module.layers, x)


def _conv_network(g: GraphBuilder, module: ConvNetwork, x: str) -> str:
    """The flat rows back to NCHW, then Conv/Relu/MaxPool blocks, flatten, ReLU layers."""
    shape = [-1, module.in_channels, module.image_size, module.image_size]
    x = g.op("Reshape", [x, g.constant("image_shape", np.array(shape, dtype=np.int64))])
    for i, conv in enumerate(module.convs):
        weights = conv.W.value
        pad = conv.padding
        x = g.op("Conv", [x, g.constant(f"convs.{i}.W", weights),
                          g.constant(f"convs.{i}.b", conv.b.value)],
                 kernel_shape=list(weights.shape[2:]), pads=[pad] * 4, strides=[1, 1])
        x = g.op("Relu", [x])
        if module.pool > 1:  # floor division of the size, as autodiff's MaxPool2d
            x = g.op("MaxPool", [x], kernel_shape=[module.pool] * 2, strides=[module.pool] * 2)
    x = g.op("Flatten", [x], axis=1)  # (N, C*H*W) in C-major order, as ConvNetwork's reshape
    return _dense_stack(g, module.layers, x)


#: Graph builders by network class: (builder, module, flat normalised input) -> logits name.
#: tests/test_onnx.py checks that every class of models.NETWORKS is listed here.
EXPORTERS: dict[type[Module], Callable[[GraphBuilder, Module, str], str]] = {
    LinearNetwork: _linear_network,
    DeepNetwork: _deep_network,
    ConvNetwork: _conv_network,
}


def _normalise(g: GraphBuilder, preprocessing: dict | None) -> str:
    """pixels [N, 28, 28] -> (flat - mean) * (1 / std), exactly as models.to_model_input."""
    flat_shape = np.array([-1, INPUT_SHAPE[0] * INPUT_SHAPE[1]], dtype=np.int64)
    x = g.op("Reshape", [INPUT, g.constant("flat_shape", flat_shape)])
    if not preprocessing:
        return x
    mean = np.float32(preprocessing.get("mean", 0.0))
    inv_std = np.float32(1.0 / preprocessing.get("std", 1.0))
    x = g.op("Sub", [x, g.constant("mean", np.array(mean))])
    return g.op("Mul", [x, g.constant("inv_std", np.array(inv_std))])


def _decide(g: GraphBuilder, logits: str, decision: Decision) -> list:
    """The decision's outputs from the eleven logits (models.decision.scores, in ONNX)."""
    z = g.op("Div", [logits, g.constant("temperature", np.array(decision.temperature,
                                                                  dtype=np.float32))])

    def columns(start: int, end: int) -> str:
        return g.op("Slice", [z, g.constant("starts", np.array([start], dtype=np.int64)),
                              g.constant("ends", np.array([end], dtype=np.int64)),
                              g.constant("axes", np.array([1], dtype=np.int64))])

    every = g.op("Softmax", [z], axis=1)
    g.op("Slice", [every, g.constant("starts", np.array([0], dtype=np.int64)),
                   g.constant("ends", np.array([DIGITS], dtype=np.int64)),
                   g.constant("axes", np.array([1], dtype=np.int64))], PROBABILITIES)
    g.op("ArgMax", [PROBABILITIES], DIGIT, axis=1, keepdims=0)
    g.op("ReduceSum", [PROBABILITIES, g.constant("axis", np.array([1], dtype=np.int64))],
         DIGIT_PROBABILITY, keepdims=0)
    some_digit = g.op("ReduceLogSumExp", [columns(0, DIGITS)], axes=[1], keepdims=0)
    not_digit = g.op("Squeeze", [columns(DIGITS, DIGITS + 1),
                                 g.constant("axis", np.array([1], dtype=np.int64))])
    odds = g.op("Sub", [some_digit, not_digit])
    g.op("GreaterOrEqual", [odds, g.constant("threshold", np.array(decision.threshold,
                                                                 dtype=np.float32))], IS_DIGIT)
    return [helper.make_tensor_value_info(IS_DIGIT, TensorProto.BOOL, ["N"]),
            helper.make_tensor_value_info(DIGIT_PROBABILITY, TensorProto.FLOAT, ["N"])]


def to_onnx(module: Module, preprocessing: dict | None, doc: str = "",
            metadata: dict[str, str] | None = None,
            decision: Decision | None = None) -> onnx.ModelProto:
    """The ONNX model of ``module`` with its preprocessing (and its decision, when it has
    one); ValueError for an unknown class."""
    if onnx is None:
        raise ModuleNotFoundError(
            "ONNX export needs the onnx package: pip install 'digitgrad[onnx]'")
    exporter = EXPORTERS.get(type(module))
    if exporter is None:
        known = ", ".join(cls.__name__ for cls in EXPORTERS)
        raise ValueError(f"no ONNX export for {type(module).__name__}: add a graph builder for "
                         f"it to EXPORTERS in models/onnx_export.py (known: {known})")
    g = GraphBuilder()
    logits = exporter(g, module, _normalise(g, preprocessing))
    extra = []
    if decision is None:
        g.op("Softmax", [logits], PROBABILITIES, axis=1)
        g.op("ArgMax", [logits], DIGIT, axis=1, keepdims=0)
    else:
        extra = _decide(g, logits, decision)
    classes = DIGITS if decision is not None else module.config().get("dim_output")
    graph = helper.make_graph(
        g.nodes, "digitgrad",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", *INPUT_SHAPE])],
        [helper.make_tensor_value_info(PROBABILITIES, TensorProto.FLOAT, ["N", classes]),
         helper.make_tensor_value_info(DIGIT, TensorProto.INT64, ["N"]), *extra],
        g.initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="digitgrad", doc_string=doc)
    # onnxruntime and Triton read IR versions up to what they were built for; the one this
    # opset first shipped with (7, for opset 13) is the widest choice.
    model.ir_version = 7
    helper.set_model_props(model, metadata or {})
    onnx.checker.check_model(model, full_check=True)
    return model


def export(model_path: str | Path, onnx_path: str | Path) -> onnx.ModelProto:
    """Load a model file written by the trainer and write its ONNX model to ``onnx_path``."""
    model_path = Path(model_path)
    module, metadata = load(model_path)
    preprocessing = metadata.get("preprocessing")
    decision = Decision.from_metadata(metadata, module.config().get("dim_output"))
    sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    props = {"digitgrad.source": model_path.name, "digitgrad.sha256": sha256,
             "digitgrad.architecture": json.dumps(module.config()),
             "digitgrad.preprocessing": json.dumps(preprocessing)}
    if metadata.get("classes"):  # names of the probabilities' columns, when the file has them
        props["digitgrad.classes"] = json.dumps(metadata["classes"])
    if decision is not None:
        props["digitgrad.decision"] = json.dumps(decision.to_metadata())
    model = to_onnx(module, preprocessing, f"digitgrad {model_path.name}", props, decision)
    onnx.save_model(model, str(onnx_path))
    return model


def main(argv: list[str] | None = None) -> int:
    """Export MODEL to OUT; a file that cannot be exported is one line on stderr, exit 1."""
    parser = argparse.ArgumentParser(
        prog="python -m models.onnx_export",
        description="Write a model file from `python -m trainer` as an ONNX model (opset "
                    f"{OPSET}): input {INPUT} float32 [N, 28, 28] in [0, 1], outputs "
                    f"{PROBABILITIES} float32 [N, 10] and {DIGIT} int64 [N].")
    parser.add_argument("model", help="model file (.npz) written by the trainer")
    parser.add_argument("out", help="ONNX file to write (e.g. model.onnx)")
    args = parser.parse_args(argv)
    try:
        export(args.model, args.out)
    except (ModelFileError, ValueError, ModuleNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


def run() -> None:
    """Console-script entry point (digitgrad-export-onnx)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
