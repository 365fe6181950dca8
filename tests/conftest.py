"""Shared fixtures: MNIST location, a tiny saved model, a model trained by the real trainer."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models import DeepNetwork, preprocessing_config, save

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The official MNIST files ($MNIST_DIR); tests needing them skip when it is unset."""
    value = os.environ.get("MNIST_DIR")
    if not value:
        pytest.skip("MNIST_DIR is not set (point it at the four MNIST IDX files)")
    path = Path(value)
    if not path.is_dir():
        pytest.fail(f"MNIST_DIR={value} is not a directory")
    return path


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    """An untrained DeepNetwork(784, 10, 16, 1) saved with MNIST-style preprocessing."""
    model = DeepNetwork(784, 10, 16, 1, rng=np.random.default_rng(0))
    path = tmp_path / "tiny.npz"
    save(model, path, {"preprocessing": preprocessing_config(0.1307, 0.3081)})
    return path


@pytest.fixture(scope="session")
def trained_model_path(mnist_dir: Path, tmp_path_factory) -> Path:
    """The default CNN trained for real by `python -m trainer`, kept cheap (one epoch: about
    8 s on a quiet machine) yet accurate enough to serve (about 98% on the test set)."""
    from trainer.__main__ import main

    out = tmp_path_factory.mktemp("trained")
    path = out / "model.npz"
    argv = ["--data-dir", str(mnist_dir), "--epochs", "1", "--out", str(path),
            "--checkpoint-dir", str(out / "checkpoints"), "--quiet"]
    assert main(argv) == 0
    return path
