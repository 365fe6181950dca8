"""The /predict API's routes, thin: read the request -> the inference service -> JSON."""

from __future__ import annotations

import base64

import numpy as np
from flask import Blueprint, Response, current_app, jsonify, request

from server import imaging, requestlog
from server.bodies import allow_batch_body, check_streamed_body
from server.errors import ApiError, error_body, error_response
from server.inference import Busy, Prediction
from server.model import LoadedModel
from server.openapi import openapi_document
from server.state import Serving, get_serving

bp = Blueprint("api", __name__)

TRUE_FLAGS = frozenset({"1", "true", "yes", "on"})
#: The drawing page loads only its own script, style sheet and images (data: for the 28x28
#: previews and the favicon, blob: for a chosen file shown on the canvas); no inline script.
PAGE_CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
            "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


#: Every answer's: no MIME sniffing (``_security_headers``).
NOSNIFF = ("X-Content-Type-Options", "nosniff")
#: The routes that predict: shed under overload (``shed_early``).
PREDICTING = frozenset({"api.predict", "api.predict_batch", "api.predict_number", "v2.infer"})


@bp.before_app_request
def shed_early() -> None:
    """A prediction arriving while its worker's compute slot has a full line is answered 503
    before its body is read or parsed: shedding must cost less than serving, or an overloaded
    worker spends its CPU refusing. (The slot checks again when it is asked for.)"""
    if request.endpoint in PREDICTING and get_serving().inference.slots.full():
        raise Busy()


@bp.after_app_request
def _security_headers(response: Response) -> Response:
    """No MIME sniffing on any answer; the page also gets its Content-Security-Policy."""
    response.headers.setdefault(*NOSNIFF)
    if request.endpoint == "api.index":
        response.headers["Content-Security-Policy"] = PAGE_CSP
    return response


def ready_model() -> LoadedModel:
    """The loaded model, or ApiError 503 while its self-test has not passed."""
    model = get_serving().model
    if not model.ready:
        raise ApiError(503, "not_ready", "The model is not ready to serve; GET /readyz says why.")
    return model


def _digit_json(prediction: Prediction) -> dict:
    """The start of every prediction's JSON: the digit, its ``label`` (the class name) when
    the model file names them, and the confidence."""
    body: dict = {"digit": prediction.digit}
    if prediction.label is not None:
        body["label"] = prediction.label
    body["confidence"] = prediction.confidence
    return body


#: Decimal places of the attributions in JSON: logit units, so 1e-4 is far below any evidence
#: shown, and the map's sum moves by 784 x 5e-5 = 0.04 at most (docs/serving.md#explanations).
ATTRIBUTION_DECIMALS = 4


def _prediction_json(prediction: Prediction) -> dict:
    """One image's prediction, as /predict and each file of /predict/batch answer it, with
    its attributions (28 lists of 28 numbers) when they were asked for."""
    body = {**_digit_json(prediction), "probabilities": prediction.probabilities.tolist(),
            **_decision_json(prediction), "model": prediction.model_id}
    if prediction.attributions is not None:
        rounded = np.round(prediction.attributions.astype(np.float64), ATTRIBUTION_DECIMALS)
        body["attributions"] = (rounded + 0.0).tolist()  # + 0.0: no "-0.0" in the JSON
    return body


def _decision_json(prediction: Prediction) -> dict:
    """Whether the model takes the image for a digit at all, and how sure it is."""
    return {"is_digit": prediction.is_digit, "digit_probability": prediction.digit_probability}


NOT_A_DIGIT = ("That does not look like a digit; the closest digit is in \"closest\". Send "
               "?plain=1 for the closest digit as an answer whatever the image holds.")


def _refuse(body: dict) -> ApiError:
    """422 not_a_digit, with the answer the image would have had as ``closest``."""
    return ApiError(422, "not_a_digit", NOT_A_DIGIT, {"closest": body})


def _requested(flag: str) -> bool:
    """A query flag such as ?debug=1 or ?explain=true."""
    return request.args.get(flag, "").lower() in TRUE_FLAGS


def _debug_image(image) -> str:
    """?debug=1: the 28x28 image the model saw, as base64 PNG."""
    return base64.b64encode(imaging.to_png(image)).decode("ascii")


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


def _ready_upload(serving: Serving) -> tuple[LoadedModel, bytes]:
    """/predict's and /predict/number's start: the ready model and the upload, read as the
    "decode" stage."""
    model = ready_model()
    with serving.metrics.stage("decode"):
        return model, _single_upload()


@bp.post("/predict")
def predict():
    """Predict the digit in one image; ?debug=1 adds the 28x28 image the model saw, ?explain=1
    the attributions over it."""
    serving = get_serving()
    model, data = _ready_upload(serving)
    prediction = serving.inference.predict_file(model, data, explain=_requested("explain"))
    requestlog.record_predictions([prediction])
    with serving.metrics.stage("encode"):
        body = _prediction_json(prediction)
        if _requested("debug"):
            body["debug_image"] = _debug_image(prediction.image)
        if not prediction.is_digit and not _requested("plain"):
            raise _refuse(body)
        return jsonify(body)


@bp.post("/predict/number")
def predict_number():
    """Read a written number: its digits left to right, predicted in one forward pass."""
    serving = get_serving()
    model, data = _ready_upload(serving)
    digits = serving.inference.predict_number(model, data)
    requestlog.record_predictions(prediction for prediction, _box in digits)
    with serving.metrics.stage("encode"):
        debug = _requested("debug")
        entries = []
        for prediction, box in digits:
            entry = {**_digit_json(prediction), **_decision_json(prediction), "box": list(box)}
            if debug:
                entry["debug_image"] = _debug_image(prediction.image)
            entries.append(entry)
        number = "".join(str(prediction.digit) for prediction, _box in digits)
        body = {"number": number, "digits": entries, "model": model.model_id}
        # each piece decided on its own: one that is not a digit refuses the number, and the
        # pieces' is_digit say which
        if not all(prediction.is_digit for prediction, _box in digits) and not _requested("plain"):
            raise _refuse(body)
        return jsonify(body)


@bp.post("/predict/batch")
def predict_batch():
    """Predict every file of the multipart field "images", in order, in one forward pass;
    ?explain=1 adds each one's attributions."""
    serving = get_serving()
    model = ready_model()
    max_files = current_app.config["MAX_BATCH_FILES"]
    allow_batch_body(max_files, current_app.config["MAX_UPLOAD_BYTES"])
    if request.mimetype != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       'Send the images as multipart/form-data, each in the field "images".')
    with serving.metrics.stage("decode"):
        uploads = request.files.getlist("images")
        check_streamed_body()
    if not uploads:
        raise ApiError(400, "missing_field",
                       'No files in the multipart field "images": attach them there.')
    if len(uploads) > max_files:
        raise ApiError(413, "too_many_files",
                       f"At most {max_files} files per batch; split the request.")
    # Each file read as the service reaches it: one file's bytes held at a time.
    results = serving.inference.predict_files(
        model, (upload.read() for upload in uploads),
        refused=lambda _index, error: serving.metrics.observe_rejection(error.code),
        explain=_requested("explain"))
    requestlog.record_predictions(results)
    plain = _requested("plain")  # the closest digit whatever the upload holds
    with serving.metrics.stage("encode"):
        entries = []
        for r in results:
            if isinstance(r, imaging.ImageError):
                entries.append(error_body(r.code, str(r)))
            elif r.is_digit or plain:
                entries.append(_prediction_json(r))
            else:  # each image decided on its own, as a refused file is
                serving.metrics.observe_rejection("not_a_digit")
                entries.append(error_body("not_a_digit", NOT_A_DIGIT,
                                          {"closest": _prediction_json(r)}))
        return jsonify({"predictions": entries})


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
