"""Every architecture a model file can name, in one table, and ``build`` that rebuilds one.

A new network class goes into ``NETWORKS`` here, and its ONNX graph into
``models.onnx_export.EXPORTERS`` (tests/test_onnx.py checks that the two tables agree).
"""

from __future__ import annotations

import numpy as np

from models.convnet import ConvNetwork
from models.module import Module
from models.networks import DeepNetwork, LinearNetwork

#: Network classes by the name their ``config()["class"]`` (and so a model file) gives.
NETWORKS: dict[str, type[Module]] = {
    cls.__name__: cls for cls in (LinearNetwork, DeepNetwork, ConvNetwork)
}


def build(config: dict, rng: np.random.Generator | None = None, dtype=np.float32) -> Module:
    """The network a ``config()`` describes (freshly initialised)."""
    if not isinstance(config, dict) or config.get("class") not in NETWORKS:
        known = ", ".join(NETWORKS)
        raise ValueError(f"unknown architecture {config!r}: expected a dict with class in {known}")
    kwargs = {k: v for k, v in config.items() if k != "class"}
    try:
        return NETWORKS[config["class"]](**kwargs, rng=rng, dtype=dtype)
    except TypeError as exc:
        raise ValueError(f"invalid {config['class']} config {kwargs}: {exc}") from exc
