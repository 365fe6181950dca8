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
#: Uploads decoded or forward passes run at once in one worker process. One: the GIL runs one
#: thread's Python at a time anyway, and every numpy call that releases it hands it to another
#: runnable thread. Measured (8 threads predicting a 28x28 digit with the CNN): 23 context
#: switches and 300 us of system time per forward pass, CPU per prediction 2.2x that of one
#: thread; with one thread computing at a time, the same as one thread. It also bounds memory:
#: one image decoded per worker (up to the pixel limit's worth). Threads stay many, so slow
#: clients only wait (gunicorn.conf.py); run one worker per core for parallelism.
COMPUTE_SLOTS = 1


@dataclass
class Serving:
    """What the routes need, kept in ``app.extensions["digitgrad"]``: no module globals."""

    model: LoadedModel
    metrics: Metrics
    #: The last refused reload ({"file": ..., "error": ...}), reported by /readyz; None after
    #: a successful one.
    reload_error: dict | None = None
    #: Held while an upload is decoded or a forward pass runs (``server.api.compute_slot``).
    compute_slots: threading.BoundedSemaphore = field(
        default_factory=lambda: threading.BoundedSemaphore(COMPUTE_SLOTS))


def init_app(app: Flask, serving: Serving) -> None:
    """Attach ``serving`` to ``app``."""
    app.extensions[EXTENSION] = serving


def get_serving(app: Flask | None = None) -> Serving:
    """The serving state of ``app``, or of the app handling the current request."""
    return (app or current_app).extensions[EXTENSION]
