"""The app factory: configuration, the model loaded once, routes, JSON errors, request metrics."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path

import orjson
from flask import Flask
from flask.json.provider import JSONProvider

from models import ModelFileError
from server import api, bodies, fastpath, imaging, metrics, requestlog, state, v2
from server.errors import register_error_handlers
from server.inference import Inference
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
    # 28x28 images of one V2 `pixels` request: 3.2 MB binary, at most ~19 MB as JSON, run
    # PREDICT_CHUNK at a time (server/inference.py), so memory is bounded by the chunk.
    "MAX_TENSOR_IMAGES": 1024,
    # Requests per worker waiting for the compute slot; a prediction that finds this many is
    # answered 503 with Retry-After at once (server/inference.py, server/worker.py), so the
    # admitted ones keep a short wait under overload. 0: none waits.
    "MAX_QUEUED_REQUESTS": 32,
    # Milliseconds a prediction may wait in a worker's line while more than
    # MAX_QUEUED_REQUESTS others wait: one that has waited longer is answered 503 when its turn
    # comes (server/worker.py), so that under overload the admitted ones wait no more.
    "MAX_QUEUE_WAIT_MS": 50,
    # Bytes of request bodies one worker process holds at once, all its threads together
    # (server/bodies.py); None: the largest body a route takes and four single uploads.
    "MAX_BODY_BYTES_PER_WORKER": None,
}
INT_SETTINGS = ("MAX_UPLOAD_BYTES", "MAX_IMAGE_PIXELS", "MAX_BATCH_FILES", "MAX_TENSOR_IMAGES",
                "MAX_QUEUED_REQUESTS", "MAX_QUEUE_WAIT_MS", "MAX_BODY_BYTES_PER_WORKER")
#: Settings that may be 0.
ZERO_ALLOWED = ("MAX_QUEUED_REQUESTS",)

log = logging.getLogger(__name__)


class StartupError(RuntimeError):
    """The app cannot start (model file or setting); the message is one line for operators.

    A RuntimeError because gunicorn's master prints those as one ``Error: ...`` line and exits
    1, where any other exception from a preloaded app is a traceback.
    """


def load_settings(config: Mapping | None = None) -> dict:
    """DEFAULTS, overridden by the environment, overridden by ``config``; limits validated."""
    settings = dict(DEFAULTS)
    settings.update({k: os.environ[k] for k in DEFAULTS if k in os.environ})
    settings.update(config or {})
    for key in INT_SETTINGS:
        if key == "MAX_BODY_BYTES_PER_WORKER" and settings[key] is None:
            settings[key] = body_bytes_per_worker(settings)
        value = settings[key]
        try:
            number = int(value)
        except (TypeError, ValueError):
            number = -1
        lowest = 0 if key in ZERO_ALLOWED else 1
        if isinstance(value, bool) or number < lowest:
            kind = "a non-negative" if lowest == 0 else "a positive"
            raise StartupError(f"{key} must be {kind} integer, got {value!r}")
        settings[key] = number
    return settings


def body_bytes_per_worker(settings: Mapping) -> int:
    """MAX_BODY_BYTES_PER_WORKER's default: the largest body a route takes (a batch of
    MAX_BATCH_FILES uploads, or MAX_TENSOR_IMAGES images as V2 JSON, with its framing) and four
    single uploads besides."""
    upload = settings["MAX_UPLOAD_BYTES"]
    largest = max(settings["MAX_BATCH_FILES"] * upload,
                  settings["MAX_TENSOR_IMAGES"] * v2.IMAGE_JSON_BYTES)
    return largest + 4 * upload + 2 * bodies.FRAMING_BYTES


def create_app(config: Mapping | None = None) -> Flask:
    """Build the app around the model at MODEL_PATH; StartupError if it cannot be served."""
    settings = load_settings(config)
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.request_class = bodies.InMemoryRequest
    app.wsgi_app = bodies.BodyBudget(settings["MAX_BODY_BYTES_PER_WORKER"]).wrap(
        fastpath.FastInfer(app, app.wsgi_app))
    app.config.update(settings)
    # Flask refuses bigger bodies with 413, multipart and raw alike, before reading them.
    app.config["MAX_CONTENT_LENGTH"] = settings["MAX_UPLOAD_BYTES"]
    app.json = OrjsonProvider(app)
    try:
        model = LoadedModel(settings["MODEL_PATH"])
    except ModelFileError as exc:
        raise StartupError(f"cannot serve model {exc} ({_what_to_do(exc)})") from exc
    # A model that loads but fails the self-test keeps the app up but not ready: /readyz
    # answers 503 with the reason, so an orchestrator holds traffic back and the log says why.
    if not model.self_test():
        log.error("model %s is not ready: %s", model.path, model.self_test_error)
    app_metrics = metrics.init_app(app)
    inference = Inference(app_metrics, compute_slots=state.COMPUTE_SLOTS,
                          max_queued=settings["MAX_QUEUED_REQUESTS"],
                          max_upload_bytes=settings["MAX_UPLOAD_BYTES"],
                          max_pixels=settings["MAX_IMAGE_PIXELS"])
    state.init_app(app, state.Serving(model=model, metrics=app_metrics, inference=inference))
    requestlog.init_app(app)
    app.register_blueprint(api.bp)
    app.register_blueprint(v2.bp)
    register_error_handlers(app, imaging.ImageError)
    return app


class OrjsonProvider(JSONProvider):
    """Flask's JSON through orjson: several times faster than the json module both ways, keys
    in insertion order ("digit", "confidence", ... as documented), numpy arrays written as
    lists. Parsing is iterative up to 1,024 levels (an error beyond), never a RecursionError."""

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        body = orjson.dumps(self._prepare_response_obj(args, kwargs),
                            option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_APPEND_NEWLINE)
        return self._app.response_class(body, mimetype="application/json")


def _what_to_do(exc: ModelFileError) -> str:
    """The start-up error's advice: an unreadable file needs its mode fixed, not another path."""
    if isinstance(exc.__cause__, PermissionError):
        # Typically a container, whose user (uid 10001 in our image) is not the one who trained.
        return (f"the file is there, but uid {os.getuid()} may not read it: make it readable, "
                f"e.g. chmod a+r {Path(exc.path).name}")
    return (f"set MODEL_PATH to a file written by `python -m trainer`; "
            f"current directory {Path.cwd()}")


def reload_model(app: Flask) -> tuple[bool, str]:
    """Load MODEL_PATH again (gunicorn's HUP): whether it now serves, and one line for the log.

    The new file replaces the served model only if it loads and passes the self-test; if not,
    the current model keeps serving and ``reload_error`` names the file (its name: /readyz is
    unauthenticated, the path stays in the log) and the problem for /readyz. Never raises: it
    runs in gunicorn's master, which an exception would stop.
    """
    serving = state.get_serving(app)
    path = app.config["MODEL_PATH"]
    old_id = serving.model.model_id
    try:
        model = LoadedModel(path)
        problem = None if model.self_test() else model.self_test_error
    except ModelFileError as exc:
        problem = exc.problem
    except Exception as exc:  # whatever the file holds, the master and the old model survive
        log.exception("model reload from %s failed", path)
        problem = f"unexpected {type(exc).__name__} while loading it (the server log has it)"
    if problem is not None:
        serving.reload_error = {"file": Path(path).name, "error": problem}
        return False, f"model reload refused, still serving {old_id}: {path}: {problem}"
    serving.model = model
    serving.reload_error = None
    return True, f"model reloaded from {path}: now serving {model.model_id} (was {old_id})"
