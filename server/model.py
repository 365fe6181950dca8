"""The served model: loaded once per worker, predicts probabilities, knows its identity."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np

import models
from autodiff import no_grad
from models.decision import Decision, DecisionError, Scores, scores
from models.explain import integrated_gradients

#: Length of the sha256 prefix that names the model in every prediction.
MODEL_ID_LENGTH = 12


def file_sha256(path: Path) -> str:
    """Hex sha256 of a model file, read in chunks (opened as ``models.load`` opens it)."""
    digest = hashlib.sha256()
    with models.open_regular_file(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def class_names(path: Path, metadata: dict) -> list[str] | None:
    """The file's class names (metadata["classes"], ten strings), or None when it has none.

    MNIST models name none: the index is the digit. Fashion-MNIST models name theirs, and every
    prediction then carries ``label`` beside the index.
    """
    classes = metadata.get("classes")
    if classes is None:
        return None
    if not (isinstance(classes, list) and len(classes) == 10
            and all(isinstance(c, str) and c for c in classes)):
        raise models.ModelFileError(path, "metadata classes must be a list of 10 non-empty "
                                          "strings (one name per output)")
    return classes


class LoadedModel:
    """A model file loaded for serving.

    ``predict`` is safe to call from many threads at once: the forward pass only reads the
    parameters, and ``no_grad()`` is thread-local (the service still runs one at a time per
    worker: ``server.state.COMPUTE_SLOTS``).
    """

    def __init__(self, path: str | Path):
        """Load ``path``; raises ``models.ModelFileError`` naming the file and the problem."""
        self.path = Path(path)
        started = time.perf_counter()
        self.module, self.metadata = models.load(self.path)
        # Serve in float32 whatever the file holds: half the memory and faster products, and
        # the inputs are float32 anyway.
        for parameter in self.module.parameters():
            parameter.value = parameter.value.astype(np.float32, copy=False)
        self.sha256 = file_sha256(self.path)
        self.preprocessing = self.metadata.get("preprocessing")
        self.classes = class_names(self.path, self.metadata)
        try:
            # "not a digit" (models.decision): None for files without one, which never refuse
            self.decision = Decision.from_metadata(self.metadata, self.module.dim_output)
        except DecisionError as exc:
            raise models.ModelFileError(self.path, str(exc)) from exc
        self.load_seconds = time.perf_counter() - started
        self.loaded_at = time.time()
        self.self_test_error: str | None = "self-test not run"

    @property
    def model_id(self) -> str:
        """The sha256 prefix every prediction carries, so clients can tell models apart."""
        return self.sha256[:MODEL_ID_LENGTH]

    def label(self, index: int) -> str | None:
        """The name of class ``index``, or None when the file names no classes."""
        return self.classes[index] if self.classes else None

    @property
    def ready(self) -> bool:
        """True once a self-test prediction has passed."""
        return self.self_test_error is None

    def predict(self, images: np.ndarray) -> np.ndarray:
        """Probabilities (N, 10) float64 for images (N, 28, 28) in [0, 1], ink bright on black
        (with a decision they sum to the probability of "a digit"; see ``answer``)."""
        return self.answer(images).probabilities

    def answer(self, images: np.ndarray) -> Scores:
        """The digits' probabilities and, per image, whether it is a digit and how sure."""
        x = models.to_model_input(images, self.preprocessing)
        with no_grad():
            logits = self.module(x).value
        return scores(logits, self.decision)

    def explain(self, image: np.ndarray, digit: int) -> np.ndarray:
        """Integrated gradients (28, 28) of ``digit``'s logit over ``image`` (28, 28) in [0, 1]:
        one batched forward and backward pass (``models.explain``), reading the parameters only,
        so it is thread-safe as ``predict`` is."""
        return integrated_gradients(self.module, image, self.preprocessing, digit).map

    def self_test(self) -> bool:
        """Predict a blank and a synthetic stroke; ready only if the answers are sane.

        Catches models that load but cannot serve (wrong output size, NaN or Inf logits from
        overflowing weights). The reason is kept in ``self_test_error`` for /readyz; the caller
        logs it (once, in its own words: at start, or when a reload is refused).
        """
        images = np.zeros((2, 28, 28), dtype=np.float32)
        images[1, 4:24, 13:15] = 1.0  # a vertical bar: something like a "1"
        try:
            # Non-finite outputs are judged below; numpy's overflow warnings would only repeat it.
            with np.errstate(all="ignore"):
                probs = self.predict(images)
        except Exception as exc:  # any failure here means "not ready", with the reason
            self.self_test_error = f"self-test prediction raised {type(exc).__name__}: {exc}"
        else:
            if probs.shape != (2, 10):
                self.self_test_error = (
                    f"self-test: expected 10 class probabilities per image, got shape {probs.shape}"
                )
            elif not np.isfinite(probs).all() or not (
                    np.allclose(probs.sum(axis=1), 1.0) if self.decision is None
                    else (probs.sum(axis=1) <= 1 + 1e-9).all()):
                self.self_test_error = ("self-test: probabilities are not finite or do not sum "
                                        "to 1 (at most 1 with a not-a-digit decision)")
            else:
                self.self_test_error = None
        return self.ready

    def info(self) -> dict:
        """What GET /model reports: architecture, size, preprocessing, training, identity."""
        meta = self.metadata
        return {
            "id": self.model_id,
            "sha256": self.sha256,
            "file": self.path.name,
            "architecture": self.module.config(),
            "parameters": self.module.num_parameters(),
            "preprocessing": self.preprocessing,
            "training": meta.get("training"),
            "metrics": meta.get("metrics"),
            "data": meta.get("data"),
            "created": meta.get("created"),
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
            "load_seconds": round(self.load_seconds, 4),
            "ready": self.ready,
            **({"classes": self.classes} if self.classes else {}),  # as predictions' "label"
            "decision": self.decision.to_metadata() if self.decision else None,
        }
