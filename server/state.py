"""The app's serving state (the model and the metrics) and its one accessor, ``get_serving()``.

Its own module, like Flask's tutorial ``get_db()``: the app factory stores the state and every
route module reads it through here, so ``app.extensions[...]`` is spelled once and importing
the accessor never cycles through ``server.app`` (or ``server.errors``, which may use it).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from flask import Flask, current_app

from server.metrics import Metrics
from server.model import LoadedModel

EXTENSION = "digitgrad"
#: Uploads one worker process decodes at once. gunicorn gives each worker many threads so that
#: slow clients only wait (gunicorn.conf.py); decoding is what costs CPU and memory (up to the
#: pixel limit's worth per image), so it gets a few slots, not one per thread: 4 was the
#: thread count before, so the work per worker is bounded as it was.
COMPUTE_SLOTS = 4


@dataclass
class Serving:
    """What the routes need, kept in ``app.extensions["digitgrad"]``: no module globals."""

    model: LoadedModel
    metrics: Metrics
    #: The last refused reload ({"file": ..., "error": ...}), reported by /readyz; None after
    #: a successful one.
    reload_error: dict | None = None
    #: Held while an upload is decoded (``server.api.compute_slot``): COMPUTE_SLOTS at once.
    compute_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(COMPUTE_SLOTS))


def init_app(app: Flask, serving: Serving) -> None:
    """Attach ``serving`` to ``app``."""
    app.extensions[EXTENSION] = serving


def get_serving(app: Flask | None = None) -> Serving:
    """The serving state of ``app``, or of the app handling the current request."""
    return (app or current_app).extensions[EXTENSION]
