"""Every architecture a model file can name, in one table, and ``build`` that rebuilds one.

A new network class (with a static ``parameter_count`` taking its constructor's arguments)
goes into ``NETWORKS`` here, and its ONNX graph into
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


#: Parameters a model file may declare: checked before its network is built, so that a small
#: file cannot make a loader allocate gigabytes (64 MB in float32; our models have < 1 M).
MAX_PARAMETERS = 16_000_000


def parameter_count(config: dict) -> int:
    """The number of parameters of the network a ``config()`` describes, without building it;
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
