"""Shared fixtures: MNIST location, a tiny saved model, a model trained by the real trainer,
and the app around the tiny model with its test client."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from models import DeepNetwork, preprocessing_config, save
from server import create_app

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


def save_tiny_model(folder: Path) -> Path:
    """An untrained DeepNetwork(784, 10, 16, 1) saved with MNIST-style preprocessing."""
    model = DeepNetwork(784, 10, 16, 1, rng=np.random.default_rng(0))
    path = folder / "tiny.npz"
    save(model, path, {"preprocessing": preprocessing_config(0.1307, 0.3081)})
    return path


@pytest.fixture
def tiny_model_path(tmp_path: Path) -> Path:
    """The tiny model, in this test's own folder (it may change or replace the file)."""
    return save_tiny_model(tmp_path)


@pytest.fixture(scope="session")
def shared_tiny_model_path(tmp_path_factory) -> Path:
    """The tiny model, saved once for the tests that only read it (servers shared by a
    module's tests)."""
    return save_tiny_model(tmp_path_factory.mktemp("shared-tiny"))


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


@pytest.fixture
def make_app(tiny_model_path: Path):
    """``make_app(**settings)``: the app around the tiny model in testing mode, with settings
    (limits, another MODEL_PATH) overridden, e.g. ``make_app(MAX_BATCH_FILES=2)``."""

    def make(**settings):
        return create_app({"TESTING": True, "MODEL_PATH": str(tiny_model_path), **settings})

    return make


@pytest.fixture
def app(make_app):
    """The app around the tiny model with the default settings; a test module that needs
    other limits overrides this fixture with ``make_app(...)``."""
    return make_app()


@pytest.fixture
def client(app):
    """Flask's test client of ``app``."""
    return app.test_client()
