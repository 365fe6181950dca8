"""The installed digitgrad's version: model files record it, the V2 server metadata reports it."""

from __future__ import annotations

import importlib.metadata


def digitgrad_version() -> str:
    """The installed package's version (from its metadata), or "unknown" in a bare checkout."""
    try:
        return importlib.metadata.version("digitgrad")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
