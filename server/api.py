"""The routes, thin: parse the upload -> imaging.to_mnist -> model -> JSON."""

from __future__ import annotations

import base64

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import RequestEntityTooLarge

from server import imaging
from server.errors import ApiError, error_body, error_response
from server.openapi import openapi_document

bp = Blueprint("api", __name__)

TRUE_FLAGS = frozenset({"1", "true", "yes", "on"})


def _serving():
    return current_app.extensions["digitgrad"]


def _ready_model():
    model = _serving().model
    if not model.ready:
        raise ApiError(503, "not_ready", "The model is not ready to serve; GET /readyz says why.")
    return model


def _prediction(probabilities: np.ndarray, model_id: str) -> dict:
    digit = int(np.argmax(probabilities))
    _serving().metrics.observe_prediction(digit)
    return {
        "digit": digit,
        "confidence": float(probabilities[digit]),
        "probabilities": probabilities.tolist(),
        "model": model_id,
    }


def _to_mnist(data: bytes) -> np.ndarray:
    if not data:
        raise ApiError(400, "empty_image", "The uploaded image is empty.")
    return imaging.to_mnist(data, max_pixels=current_app.config["MAX_IMAGE_PIXELS"])


def _check_streamed_body() -> None:
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
        _check_streamed_body()
        if upload is None:
            raise ApiError(400, "missing_field",
                           'No file in the multipart field "image": attach the image there.')
        return upload.read()
    if request.mimetype.startswith("image/"):
        data = request.get_data(cache=False)
        _check_streamed_body()
        return data
    raise ApiError(415, "unsupported_media_type",
                   'Send the image as multipart/form-data in the field "image", or as the '
                   "request body with an image/* Content-Type.")


@bp.post("/predict")
def predict():
    """Predict the digit in one image; ?debug=1 adds the 28x28 image the model saw."""
    model = _ready_model()
    image = _to_mnist(_single_upload())
    body = _prediction(model.predict(image[None])[0], model.model_id)
    if request.args.get("debug", "").lower() in TRUE_FLAGS:
        body["debug_image"] = base64.b64encode(imaging.to_png(image)).decode("ascii")
    return jsonify(body)


@bp.post("/predict/batch")
def predict_batch():
    """Predict every file of the multipart field "images", in order, in one forward pass."""
    model = _ready_model()
    config = current_app.config
    max_files, max_bytes = config["MAX_BATCH_FILES"], config["MAX_UPLOAD_BYTES"]
    # A batch may carry max_files uploads of max_bytes each (plus multipart framing), so it
    # gets a larger body limit than /predict; each file is still held to max_bytes below.
    request.max_content_length = max_files * max_bytes + 64 * 1024
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       'Send the images as multipart/form-data, each in the field "images".')
    uploads = request.files.getlist("images")
    _check_streamed_body()
    if not uploads:
        raise ApiError(400, "missing_field",
                       'No files in the multipart field "images": attach them there.')
    if len(uploads) > max_files:
        raise ApiError(413, "too_many_files",
                       f"At most {max_files} files per batch; split the request.")
    entries: list[dict | None] = []
    images = []
    for upload in uploads:
        data = upload.read()
        try:
            if len(data) > max_bytes:
                raise ApiError(413, "image_too_large",
                               f"The file is larger than the limit of {max_bytes} bytes.")
            images.append(_to_mnist(data))
            entries.append(None)
        except (ApiError, imaging.ImageError) as exc:
            _serving().metrics.observe_rejection(exc.code)
            entries.append(error_body(exc.code, str(exc)))
    if images:
        probabilities = iter(model.predict(np.stack(images)))
        entries = [e or _prediction(next(probabilities), model.model_id) for e in entries]
    return jsonify({"predictions": entries})


@bp.get("/healthz")
def healthz():
    """Liveness: the process answers; never touches the model."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz():
    """Readiness: 200 once the model is loaded and its self-test passed, else 503."""
    model = _serving().model
    if not model.ready:
        return error_response(503, "not_ready", f"The model is not ready: {model.self_test_error}")
    return jsonify({"status": "ready", "model": model.model_id})


@bp.get("/model")
def model_info():
    """The loaded model: architecture, parameters, preprocessing, training, sha256, load time."""
    return jsonify(_serving().model.info())


@bp.get("/metrics")
def metrics():
    """Prometheus text format, summed over all gunicorn workers in multiprocess mode."""
    metrics = _serving().metrics
    return Response(metrics.exposition(), content_type=metrics.content_type)


@bp.get("/openapi.json")
def openapi():
    """The OpenAPI 3 description of this API."""
    return jsonify(openapi_document(current_app.config))


@bp.get("/")
def index():
    """The drawing page."""
    return current_app.send_static_file("index.html")
