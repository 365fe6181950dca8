"""The routes, thin: parse the upload -> imaging.to_mnist -> model -> JSON."""

from __future__ import annotations

import base64
import threading
from contextlib import contextmanager

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from server import imaging, requestlog
from server.errors import ApiError, error_body, error_response
from server.model import LoadedModel
from server.openapi import openapi_document
from server.state import get_serving

bp = Blueprint("api", __name__)

TRUE_FLAGS = frozenset({"1", "true", "yes", "on"})
#: Digits one POST /predict/number reads at most (more is answered 422 too_many_digits).
MAX_NUMBER_DIGITS = 12
#: The drawing page loads only its own script, style sheet and images (data: for the 28x28
#: previews and the favicon, blob: for a chosen file shown on the canvas); no inline script.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


_holding = threading.local()


@contextmanager
def compute_slot():
    """Hold one of this worker's COMPUTE_SLOTS (server.state) while decoding an upload or
    running the model: waiting threads sleep instead of trading the GIL with the one working.

    Re-entrant within a thread, so a route can hold one slot across its stages while the
    helpers it calls (``upload_to_mnist``, ``predict_images``) still take one when called alone.
    """
    if getattr(_holding, "slot", False):
        yield
        return
    with get_serving().compute_slots:
        _holding.slot = True
        try:
            yield
        finally:
            _holding.slot = False


def predict_images(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    """``model.predict(images)`` in a compute slot."""
    with compute_slot():
        return model.predict(images)


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    """No MIME sniffing on any answer; the page also gets its Content-Security-Policy."""
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    if request.endpoint == "api.index":
        response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


def ready_model() -> LoadedModel:
    """The loaded model, or ApiError 503 while its self-test has not passed."""
    model = get_serving().model
    if not model.ready:
        raise ApiError(503, "not_ready", "The model is not ready to serve; GET /readyz says why.")
    return model


def _prediction(probabilities: np.ndarray, model) -> dict:
    """The JSON of one prediction; ``label`` (the class name) when the model file names them."""
    digit = int(np.argmax(probabilities))
    confidence = float(probabilities[digit])
    get_serving().metrics.observe_prediction(digit)
    requestlog.record_prediction(digit, confidence)
    return {
        "digit": digit,
        **model.label(digit),
        "confidence": confidence,
        "probabilities": probabilities.tolist(),
        "model": model.model_id,
    }


def upload_to_mnist(data: bytes) -> np.ndarray:
    """One uploaded image file -> the 28x28 model input, with /predict's limits (also V2's)."""
    _check_not_empty(data)
    with compute_slot():
        return imaging.to_mnist(data, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])


def _debug_requested() -> bool:
    return request.args.get("debug", "").lower() in TRUE_FLAGS


def _debug_image(image: np.ndarray) -> str:
    """?debug=1: the 28x28 image the model saw, as base64 PNG."""
    return base64.b64encode(imaging.to_png(image)).decode("ascii")


def _check_not_empty(data: bytes) -> None:
    if not data:
        raise ApiError(400, "empty_image", "The uploaded image is empty.")


def check_streamed_body() -> None:
    """413 for a body without Content-Length (chunked) that reached the limit.

    werkzeug stops reading such a body at the limit without an error (under gunicorn, which
    terminates chunked input itself), so the rest would be silently cut off. A body of exactly
    the limit is refused too: it cannot be told apart.
    """
    if request.content_length is None and getattr(request.stream, "is_exhausted", False):
        raise RequestEntityTooLarge()


def _single_upload() -> bytes:
    """The bytes of /predict's image: multipart field "image", or a raw image/* body."""
    if request.mimetype == "multipart/form-data":
        upload = request.files.get("image")
        check_streamed_body()
        if upload is None:
            raise ApiError(400, "missing_field",
                           'No file in the multipart field "image": attach the image there.')
        return upload.read()
    if request.mimetype.startswith("image/"):
        data = request.get_data(cache=False)
        check_streamed_body()
        return data
    raise ApiError(415, "unsupported_media_type",
                   'Send the image as multipart/form-data in the field "image", or as the '
                   "request body with an image/* Content-Type.")


@bp.post("/predict")
def predict():
    """Predict the digit in one image; ?debug=1 adds the 28x28 image the model saw."""
    model = ready_model()
    metrics = get_serving().metrics
    with metrics.stage("decode"):
        data = _single_upload()
    # one slot for all the work after the body is read: threads waiting for it sleep
    with compute_slot():
        with metrics.stage("preprocess"):
            image = upload_to_mnist(data)
        with metrics.stage("inference"):
            probabilities = predict_images(model, image[None])[0]
        with metrics.stage("encode"):
            body = _prediction(probabilities, model)
            if _debug_requested():
                body["debug_image"] = _debug_image(image)
            response = jsonify(body)
    return response


@bp.post("/predict/number")
def predict_number():
    """Read a written number: its digits left to right, predicted in one forward pass."""
    model = ready_model()
    metrics = get_serving().metrics
    with metrics.stage("decode"):
        data = _single_upload()
    _check_not_empty(data)
    with compute_slot():
        return _read_number(model, metrics, data)


def _read_number(model: LoadedModel, metrics, data: bytes) -> Response:
    """/predict/number's work after the body is read (in a compute slot)."""
    with metrics.stage("preprocess"):
        digits = imaging.to_mnist_digits(data, max_pixels=current_app.config["MAX_IMAGE_PIXELS"],
                                         max_digits=MAX_NUMBER_DIGITS)
    images = np.stack([image for image, _box in digits])
    with metrics.stage("inference"):
        probabilities = predict_images(model, images)
    with metrics.stage("encode"):
        debug = _debug_requested()
        entries = []
        for image, (_, box), p in zip(images, digits, probabilities):
            digit = int(np.argmax(p))
            metrics.observe_prediction(digit)
            requestlog.record_prediction(digit, float(p[digit]))
            entry = {"digit": digit, **model.label(digit), "confidence": float(p[digit]),
                     "box": list(box)}
            if debug:
                entry["debug_image"] = _debug_image(image)
            entries.append(entry)
        number = "".join(str(e["digit"]) for e in entries)
        response = jsonify({"number": number, "digits": entries, "model": model.model_id})
    return response


@bp.post("/predict/batch")
def predict_batch():
    """Predict every file of the multipart field "images", in order, in one forward pass."""
    model = ready_model()
    metrics = get_serving().metrics
    config = current_app.config
    max_files, max_bytes = config["MAX_BATCH_FILES"], config["MAX_UPLOAD_BYTES"]
    # A batch may carry max_files uploads of max_bytes each (plus multipart framing), so it
    # gets a larger body limit than /predict; each file is still held to max_bytes below.
    request.max_content_length = max_files * max_bytes + 64 * 1024
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       'Send the images as multipart/form-data, each in the field "images".')
    with metrics.stage("decode"):
        uploads = request.files.getlist("images")
        check_streamed_body()
    if not uploads:
        raise ApiError(400, "missing_field",
                       'No files in the multipart field "images": attach them there.')
    if len(uploads) > max_files:
        raise ApiError(413, "too_many_files",
                       f"At most {max_files} files per batch; split the request.")
    entries: list[dict | None] = []
    images = []
    with metrics.stage("preprocess"):
        for upload in uploads:
            data = upload.read()
            try:
                if len(data) > max_bytes:
                    raise ApiError(413, "image_too_large",
                                   f"The file is larger than the limit of {max_bytes} bytes.")
                images.append(upload_to_mnist(data))
                entries.append(None)
            except (ApiError, imaging.ImageError) as exc:
                metrics.observe_rejection(exc.code)
                entries.append(error_body(exc.code, str(exc)))
    probabilities = iter(())
    if images:
        with metrics.stage("inference"):
            probabilities = iter(predict_images(model, np.stack(images)))
    with metrics.stage("encode"):
        entries = [e or _prediction(next(probabilities), model) for e in entries]
        response = jsonify({"predictions": entries})
    return response


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers; never touches the model."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Readiness: 200 once the model is loaded and its self-test passed, else 503.

    After a refused reload the previous model still serves, so the answer stays 200 and adds
    ``reload_error``: which file failed and why.
    """
    serving = get_serving()
    model = serving.model
    if not model.ready:
        return error_response(503, "not_ready", f"The model is not ready: {model.self_test_error}")
    body = {"status": "ready", "model": model.model_id}
    if serving.reload_error:
        body["reload_error"] = serving.reload_error
    return jsonify(body)


@bp.get("/model")
def model_info():
    """The loaded model: architecture, parameters, preprocessing, training, sha256, load time."""
    return jsonify(get_serving().model.info())


@bp.get("/metrics")
def metrics():
    """Prometheus text format, summed over all gunicorn workers in multiprocess mode."""
    metrics = get_serving().metrics
    return Response(metrics.exposition(), content_type=metrics.content_type)


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of this API."""
    return jsonify(openapi_document(current_app.config))


@bp.get("/")
def index():
    """The drawing page."""
    return current_app.send_static_file("index.html")
