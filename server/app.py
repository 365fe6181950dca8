"""The app factory: configuration, the model loaded once, routes, JSON errors, request metrics."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from flask import Flask, current_app, g, request

from models import ModelFileError
from server import api, imaging
from server.errors import register_error_handlers
from server.metrics import Metrics
from server.model import LoadedModel

#: Settings and their defaults; each can be set in the environment or in create_app's config.
DEFAULTS = {
    "MODEL_PATH": "model.npz",
    # Bytes of one upload: a phone photo is 2-5 MB. Also the limit of a /predict request body.
    "MAX_UPLOAD_BYTES": 5 * 1024 * 1024,
    # Declared pixels of one image, checked before decoding (decompression bombs): 40 MP is
    # above any phone camera.
    "MAX_IMAGE_PIXELS": 40_000_000,
    "MAX_BATCH_FILES": 16,
}
INT_SETTINGS = ("MAX_UPLOAD_BYTES", "MAX_IMAGE_PIXELS", "MAX_BATCH_FILES")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


class StartupError(RuntimeError):
    """The app cannot start (model file or setting); the message is one line for operators.

    A RuntimeError because gunicorn's master prints those as one ``Error: ...`` line and exits
    1, where any other exception from a preloaded app is a traceback.
    """


@dataclass
class Serving:
    """What the routes need, kept in ``app.extensions["digitgrad"]``: no module globals."""

    model: LoadedModel
    metrics: Metrics


def load_settings(config: Mapping | None = None) -> dict:
    """DEFAULTS, overridden by the environment, overridden by ``config``; limits validated."""
    settings = dict(DEFAULTS)
    settings.update({k: os.environ[k] for k in DEFAULTS if k in os.environ})
    settings.update(config or {})
    for key in INT_SETTINGS:
        value = settings[key]
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = 0
        if isinstance(value, bool) or number < 1:
            raise StartupError(f"{key} must be a positive integer, got {value!r}")
        settings[key] = number
    return settings


def create_app(config: Mapping | None = None) -> Flask:
    """Build the app around the model at MODEL_PATH; StartupError if it cannot be served."""
    settings = load_settings(config)
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config.update(settings)
    # Flask refuses bigger bodies with 413, multipart and raw alike, before reading them.
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_UPLOAD_BYTES"]
    app.json.sort_keys = False  # keep "digit", "confidence", ... in the documented order
    try:
        model = LoadedModel(settings["MODEL_PATH"])
    except ModelFileError as exc:
        raise StartupError(
            f"cannot serve model {exc} (set MODEL_PATH to a file written by "
            f"`python -m trainer`; current directory {Path.cwd()})"
        ) from exc
    # A model that loads but fails the self-test keeps the app up but not ready: /readyz
    # answers 503 with the reason, so an orchestrator holds traffic back and the log says why.
    model.self_test()
    app.extensions["digitgrad"] = Serving(model=model, metrics=Metrics())
    app.register_blueprint(api.bp)
    register_error_handlers(app, imaging.ImageError)
    app.before_request(_start_timer)
    app.after_request(_record_request)
    return app


def _start_timer() -> None:
    g.started = time.perf_counter()


def _record_request(response):
    """Count every answered request (errors included) by route template, not raw path."""
    started = g.get("started")
    seconds = None if started is None else time.perf_counter() - started
    # The rule's template bounds the label values; raw paths and methods would let any client
    # create series without limit.
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    method = request.method if request.method in KNOWN_METHODS else "other"
    current_app.extensions["digitgrad"].metrics.observe_request(
        method, route, response.status_code, seconds
    )
    return response
