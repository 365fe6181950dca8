"""Model files: parameters by dotted name plus one JSON metadata string, in a .npz archive.

``save`` writes the architecture (``config()``), the parameters and the caller's metadata;
``load`` rebuilds the module with ``models.build`` and checks every array. The archive itself
(atomic writes, validation, format versions) is ``models.archive``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from models.archive import ModelFileError, read_archive, write_archive
from models.module import Module, StateDictError
from models.registry import build, parameter_count


def save(module: Module, path, metadata: dict | None = None) -> None:
    """Write ``module``'s parameters, its architecture and ``metadata`` (JSON-able) to ``path``."""
    if not hasattr(module, "config"):
        raise TypeError(f"{type(module).__name__} has no config(); it cannot be rebuilt on load")
    state = module.state_dict()
    dtypes = {a.dtype.name for a in state.values()}
    meta = {
        "architecture": module.config(),
        "dtype": dtypes.pop() if len(dtypes) == 1 else "float32",
        "metadata": metadata or {},
    }
    write_archive(path, state, meta, kind="model")


def check_finite_floats(path, arrays: dict[str, np.ndarray]) -> None:
    """Every array must be float32/float64 and hold no NaN or Inf."""
    for name, array in arrays.items():
        if array.dtype not in (np.float32, np.float64):
            raise ModelFileError(
                path, f"{name} has dtype {array.dtype}; expected float32 or float64")
        if not np.isfinite(array).all():
            raise ModelFileError(path, f"{name} contains NaN or Inf values")


def load(path) -> tuple[Module, dict]:
    """The module saved at ``path`` (rebuilt from its architecture) and its metadata."""
    arrays, meta = read_archive(path, kind="model")
    dtype = meta.get("dtype", "float32")
    if dtype not in ("float32", "float64"):
        raise ModelFileError(path, f"unsupported parameter dtype {dtype!r}")
    architecture = meta.get("architecture")
    try:
        # before anything is built: a few bytes of metadata could describe gigabytes
        count = parameter_count(architecture)
    except ValueError as exc:
        raise ModelFileError(path, str(exc)) from exc
    held = sum(array.size for array in arrays.values())
    if count > held:  # else building costs no more than the arrays already read
        raise ModelFileError(path, f"its architecture ({architecture['class']}) has {count:,} "
                                   f"parameters, its arrays hold only {held:,}")
    check_finite_floats(path, arrays)
    try:
        module = build(architecture, dtype=np.dtype(dtype))
    except ValueError as exc:
        raise ModelFileError(path, str(exc)) from exc
    try:
        module.load_state_dict(arrays, strict=True)
    except StateDictError as exc:
        message = str(exc).replace("state_dict", Path(path).name, 1)
        raise ModelFileError(path, message) from exc
    return module, meta.get("metadata", {})
