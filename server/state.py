"""The app's serving state (the model and the metrics) and its one accessor, ``get_serving()``.

Its own module, like Flask's tutorial ``get_db()``: the app factory stores the state and every
route module reads it through here, so ``app.extensions[...]`` is spelled once and importing
the accessor never cycles through ``server.app`` (or ``server.errors``, which may use it).
"""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from server.inference import Inference
from server.metrics import Metrics
from server.model import LoadedModel

EXTENSION = "digitgrad"
#: Requests of one worker process that decode uploads or run the model at once. One: threads
#: computing at once trade the GIL and cost more CPU per prediction than threads taking turns,
#: and one bounds decoding memory per worker (docs/serving.md; measured in docs/benchmarks.md).
COMPUTE_SLOTS = 1


@dataclass
class Serving:
    """What the routes need, kept in ``app.extensions["digitgrad"]``: no module globals."""

    model: LoadedModel
    metrics: Metrics
    inference: Inference
    #: The last refused reload ({"file": ..., "error": ...}), reported by /readyz; None after
    #: a successful one.
    reload_error: dict | None = None


def init_app(app: Flask, serving: Serving) -> None:
    """Attach ``serving`` to ``app``."""
    app.extensions[EXTENSION] = serving


def get_serving(app: Flask | None = None) -> Serving:
    """The serving state of ``app``, or of the app handling the current request."""
    return (app or current_app).extensions[EXTENSION]
