"""The Open Inference Protocol (KServe V2) over HTTP/REST, next to the /predict API.

Two models, both backed by the loaded model file, whose id is their one version:

* ``digitgrad``: input ``pixels`` FP32 [-1, 28, 28] in [0, 1], ink bright on black (MNIST's
  convention); the normalisation recorded in the model file is applied here, as for /predict.
* ``digitgrad-image``: input ``image`` BYTES [-1], each element one encoded image file that goes
  through /predict's pipeline and limits.

Both answer ``probabilities`` FP32 [-1, 10], ``digit`` INT64 [-1], and the model file's decision
(models.decision): ``is_digit`` BOOL [-1], whether the image is a digit at all, and
``digit_probability`` FP32 [-1], how sure (a model without a decision calls everything a digit,
with probability 1); the protocol has no "not a digit" error, so a well-formed tensor is always
answered. Only when the request names it in ``outputs``: ``attributions`` FP32 [-1, 28, 28]
(integrated gradients of each digit over its 28x28 image, as /predict?explain=1 gives them).
Tensor data may be JSON or
binary (the binary tensor data extension); errors are the protocol's ``{"error": "<message>"}``.
Every count and size is checked before any image is decoded or any product computed: a
``pixels`` body is bounded by the bytes MAX_TENSOR_IMAGES images can take (JSON or binary)
before it is read; any request's JSON has its arrays and values counted before it is parsed
(against what its images need), then is parsed by
orjson (no Python recursion; nesting deeper than 1,024 is an error); the model runs over it
in chunks (server/inference.py), so memory is bounded by the chunk whatever the batch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import orjson
from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.exceptions import HTTPException

from models import digitgrad_version
from server import imaging, requestlog
from server.bodies import batch_body_bytes, check_streamed_body
from server.errors import RETRY_AFTER, UNAVAILABLE, http_error, log_unavailable
from server.inference import Busy
from server.model import LoadedModel
from server.state import get_serving

bp = Blueprint("v2", __name__, url_prefix="/v2")

HEADER_LENGTH = "Inference-Header-Content-Length"
SIDE = 28
#: Bytes before each element of a binary BYTES tensor: its length, uint32 little-endian.
LENGTH_PREFIX = 4
#: Bytes one 28x28 image's pixels may take as JSON: 24 a pixel, the 20 characters of the
#: longest float repr a client typically sends for k / 255 (0.0039215686274509803), a
#: separator, nesting brackets.
IMAGE_JSON_BYTES = SIDE * SIDE * 24
#: Arrays and values a request's JSON may hold beyond its tensors' data: the request object,
#: its inputs and outputs, their shapes and parameters.
JSON_OVERHEAD = 64
#: A JSON string, escapes included.
JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


class V2Error(Exception):
    """An error answered as ``{"error": message}`` with ``status``, as the protocol wants.

    ``code`` names the reason in the rejection metrics, as /predict's error codes do.
    """

    def __init__(self, status: int, message: str, code: str = "invalid_request"):
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass(frozen=True)
class TensorSpec:
    """A tensor's name, protocol datatype, shape (-1: any size) and little-endian dtype."""

    name: str
    datatype: str
    shape: tuple[int, ...]
    dtype: str | None  # None for BYTES: elements of any length

    def metadata(self) -> dict:
        """The protocol's $metadata_tensor."""
        return {"name": self.name, "datatype": self.datatype, "shape": list(self.shape)}


PIXELS = TensorSpec("pixels", "FP32", (-1, SIDE, SIDE), "<f4")
IMAGE = TensorSpec("image", "BYTES", (-1,), None)
OUTPUTS = {
    "probabilities": TensorSpec("probabilities", "FP32", (-1, 10), "<f4"),
    "digit": TensorSpec("digit", "INT64", (-1,), "<i8"),
    "is_digit": TensorSpec("is_digit", "BOOL", (-1,), "?"),
    "digit_probability": TensorSpec("digit_probability", "FP32", (-1,), "<f4"),
    "attributions": TensorSpec("attributions", "FP32", (-1, SIDE, SIDE), "<f4"),
}
#: The outputs of a request that names none: an explanation costs more than the prediction
#: (docs/serving.md#explanations), so it is computed only when asked for.
DEFAULT_OUTPUTS = ("probabilities", "digit", "is_digit", "digit_probability")
#: Model name -> its input; the outputs are the same for both.
MODELS = {"digitgrad": PIXELS, "digitgrad-image": IMAGE}
MODEL_NAMES = " and ".join(f'"{name}"' for name in MODELS)
OUTPUT_NAMES = ", ".join(f'"{name}"' for name in OUTPUTS)


# --- errors ---------------------------------------------------------------------------------


def _error(status: int, message: str) -> Response:
    response = jsonify({"error": message})
    response.status_code = status
    return response


@bp.errorhandler(V2Error)
def _v2_error(exc: V2Error) -> Response:
    if exc.status == 400:  # a refused request or image, counted like /predict's
        get_serving().metrics.observe_rejection(exc.code)
    return _error(exc.status, str(exc))


@bp.errorhandler(Busy)
def _busy(exc: Busy) -> Response:
    """Shed (server.inference.ComputeSlots): 503 and Retry-After, counted as a rejection."""
    get_serving().metrics.observe_rejection(exc.code)
    response = _error(503, str(exc))
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


@bp.errorhandler(HTTPException)
def _http_error(exc: HTTPException) -> Response:
    """werkzeug's (413 for a body over the limit, 405, ...) in the protocol's shape."""
    if exc.code is None or exc.code < 400:
        return exc
    code, message = http_error(exc, exc.code)
    if exc.code == 413:
        code = "request_too_large"
        limit = request.max_content_length
        message = f"The request body is larger than the limit of {limit} bytes."
    if exc.code == 413 or code == "server_busy":
        get_serving().metrics.observe_rejection(code)
    response = _error(exc.code, message)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


@bp.errorhandler(OSError)
@bp.errorhandler(MemoryError)
def _unavailable(exc: Exception) -> Response:
    """As the app's handler (server.errors), in the protocol's shape."""
    log_unavailable(exc)
    response = _error(503, UNAVAILABLE[1])
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


# --- health and metadata --------------------------------------------------------------------


@bp.get("")
def server_metadata():
    """Server metadata: name, version, and the binary tensor data extension."""
    return jsonify({"name": "digitgrad", "version": digitgrad_version(),
                    "extensions": ["binary_tensor_data"]})


@bp.get("/health/live")
def server_live():
    """Liveness: the process answers."""
    return jsonify({"live": True})


@bp.get("/health/ready")
def server_ready():
    """Readiness: 200 once the model passed its self-test, else 503."""
    ready = get_serving().model.ready
    response = jsonify({"ready": ready})
    response.status_code = 200 if ready else 503
    return response


def _model(name: str, version: str | None) -> tuple[TensorSpec, LoadedModel]:
    """The named model's input and the loaded model; 404 for an unknown name or version."""
    if name not in MODELS:
        raise V2Error(404, f"Unknown model; this server has {MODEL_NAMES}.")
    model = get_serving().model
    if version is not None and version != model.model_id:
        raise V2Error(404, f"Unknown version; the one served is {model.model_id} "
                           "(GET /v2/models/<name> lists it).")
    return MODELS[name], model


@bp.get("/models/<name>")
@bp.get("/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    """Model metadata: versions, platform, and the real inputs and outputs."""
    spec, model = _model(name, version)
    return jsonify({
        "name": name,
        "versions": [model.model_id],
        "platform": "digitgrad",
        "inputs": [spec.metadata()],
        "outputs": [output.metadata() for output in OUTPUTS.values()],
    })


@bp.get("/models/<name>/ready")
@bp.get("/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    """Model readiness: 200 once the model passed its self-test, else 503."""
    _, model = _model(name, version)
    response = jsonify({"name": name, "ready": model.ready})
    response.status_code = 200 if model.ready else 503
    return response


# --- inference ------------------------------------------------------------------------------


@bp.post("/models/<name>/infer")
@bp.post("/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    """Inference on a batch of images, as JSON or binary tensors; outputs as asked."""
    answer = answer_infer(name, version, _read_request_body, request.headers.get(HEADER_LENGTH))
    response = Response(answer.body, content_type=answer.content_type)
    if answer.header_length is not None:
        response.headers[HEADER_LENGTH] = answer.header_length
    return response


def _read_request_body(max_bytes: int) -> bytes:
    """The request's body, refused (413, unread) if it is larger than ``max_bytes``."""
    request.max_content_length = max_bytes
    body = request.get_data(cache=False)
    check_streamed_body()
    return body


@dataclass(frozen=True)
class InferAnswer:
    """An $inference_response: its body, content type, and the JSON's length when binary
    outputs follow it (the ``Inference-Header-Content-Length`` header), else None."""

    body: bytes
    content_type: str
    header_length: str | None = None


def answer_infer(name: str, version: str | None, read_body: Callable[[int], bytes],
                 header_length: str | None) -> InferAnswer:
    """The infer route without its HTTP framework (server/fastpath.py serves it too): the
    model's checks, the body from ``read_body(its limit in bytes)``, the predictions. Needs
    the app's context (``current_app``, ``g``); raises V2Error and what the model may raise."""
    spec, model = _model(name, version)
    if not model.ready:
        raise V2Error(503, "The model is not ready to serve; GET /v2/health/ready.")
    config = current_app.config
    max_bytes = config["MAX_UPLOAD_BYTES"]
    if spec is IMAGE:
        # Up to max_batch image files of max_bytes each, as for /predict/batch.
        max_batch = config["MAX_BATCH_FILES"]
        max_body = batch_body_bytes(max_batch, max_bytes + LENGTH_PREFIX)
    else:
        # Pixels cost by their count, not by a file's worst case: up to MAX_TENSOR_IMAGES,
        # the body no larger than they can take as JSON, refused before it is read.
        max_batch = config["MAX_TENSOR_IMAGES"]
        max_body = batch_body_bytes(max_batch, IMAGE_JSON_BYTES)
    serving = get_serving()
    with serving.metrics.stage("decode"):
        body = read_body(max_body)
        query, binary = _split_body(body, header_length, spec, max_batch)
        data = _input_data(query, spec, binary, max_batch, max_bytes)
        outputs = _requested_outputs(query)
    explain = any(name == "attributions" for name, _binary in outputs)
    if explain and len(data) > config["MAX_BATCH_FILES"]:
        # an explanation costs many forward and backward passes per image: bounded as a
        # batch of files is, not as plain pixels are
        raise V2Error(400, f"Attributions are given for at most {config['MAX_BATCH_FILES']} "
                           "images per request; split the batch, or leave them out.")
    if spec is PIXELS:
        with serving.metrics.stage("preprocess"):
            pixels = _pixels(data)
        predictions = serving.inference.predict_pixels(model, pixels, explain=explain)
    else:
        predictions = serving.inference.predict_files(model, data, refused=_refuse_image,
                                                      explain=explain)
    requestlog.record_predictions(predictions)
    with serving.metrics.stage("encode"):
        tensors = {"probabilities": np.stack([p.probabilities for p in predictions]),
                   "digit": [p.digit for p in predictions],
                   "is_digit": [p.is_digit for p in predictions],
                   "digit_probability": [p.digit_probability for p in predictions]}
        if explain:
            tensors["attributions"] = np.stack([p.attributions for p in predictions])
        return _infer_response(name, model.model_id, query.get("id"), outputs, tensors)


def _split_body(body: bytes, header_length: str | None, spec: TensorSpec,
                max_images: int) -> tuple[dict, memoryview]:
    """The JSON inference request and the binary data after it (empty without the header);
    the JSON's shape is checked against what ``max_images`` images of ``spec`` need before it
    is parsed (``_check_json_shape``)."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        try:
            length = int(header_length)
        except ValueError:
            length = -1
        if not 0 <= length <= len(body):
            raise V2Error(400, f"{HEADER_LENGTH} must be the byte length of the JSON at the "
                               "start of the body.")
        json_part, binary = body[:length], memoryview(body)[length:]
    _check_json_shape(json_part, spec, max_images)
    try:
        query = orjson.loads(json_part)
    except orjson.JSONDecodeError:  # also invalid UTF-8, lone surrogates, nesting > 1,024
        query = None
    if not isinstance(query, dict):
        raise V2Error(400, "The body must be a JSON inference request object "
                           '({"inputs": [...]}), followed by binary data only with '
                           f"{HEADER_LENGTH}.")
    request_id = query.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error(400, 'The request "id" must be a string.')
    return query, binary


def _check_json_shape(json_part: bytes, spec: TensorSpec, max_images: int) -> None:
    """Refuse, before parsing, JSON with more arrays, objects or values than ``max_images``
    images of ``spec`` need: parsed, each costs a Python object (an empty list 56 bytes, a
    float 24, plus 8 in its list), so a body within the byte limit written as ``[],[],...`` or
    ``1.5,1.5,...`` would take 10-20 times its size in memory (83 MB of ``[],`` sent to the
    image model took a worker to 2.5 GB). Pixels need one array per image and per row and a
    comma between values; image files one string each. Brackets and commas are counted over
    the whole JSON first (fast); for image files, only when that is over the bound are they
    counted again outside its strings (a copy of the JSON, made only then)."""
    if spec.dtype is None:  # files as strings, which may hold any bracket or comma
        most_containers, most_values = JSON_OVERHEAD, max_images + JSON_OVERHEAD
    else:  # numbers: no long strings, and JSON_OVERHEAD covers those of the request's names
        most_containers = max_images * (1 + SIDE) + JSON_OVERHEAD
        most_values = max_images * SIDE * SIDE + JSON_OVERHEAD

    def fits(text: bytes) -> bool:
        containers = text.count(b"[") + text.count(b"{")
        return containers <= most_containers and text.count(b",") <= most_values

    if fits(json_part) or (spec.dtype is None and fits(JSON_STRING.sub(b'""', json_part))):
        return
    raise V2Error(400, f"The request holds more JSON arrays or values than {max_images} "
                       f"{'image files' if spec.dtype is None else '28x28 images'} need; send "
                       "at most that many, as one flat or nested list per input.")


def _input_data(query: dict, spec: TensorSpec, binary: memoryview, max_batch: int,
                max_bytes: int) -> np.ndarray | list[bytes]:
    """The one input's data, its name, datatype, shape and sizes checked before it is read."""
    inputs = query.get("inputs")
    if (not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict)
            or inputs[0].get("name") != spec.name):
        raise V2Error(400, f'This model takes one input, "{spec.name}".')
    tensor = inputs[0]
    if tensor.get("datatype") != spec.datatype:
        raise V2Error(400, f'Input "{spec.name}" has datatype {spec.datatype}.')
    count = _batch_size(tensor.get("shape"), spec, max_batch)
    parameters = tensor.get("parameters") or {}
    size = parameters.get("binary_data_size") if isinstance(parameters, dict) else None
    if size is None:
        if len(binary):
            raise V2Error(400, "Binary data follows the JSON but no input has "
                               '"binary_data_size".')
        if "data" not in tensor:
            raise V2Error(400, f'Input "{spec.name}" has no "data" and no "binary_data_size".')
        return _json_data(tensor["data"], spec, count, max_bytes)
    if isinstance(size, bool) or not isinstance(size, int) or size != len(binary):
        raise V2Error(400, f'"binary_data_size" of input "{spec.name}" must be the length of '
                           f"the binary data after the JSON ({HEADER_LENGTH}).")
    if spec.dtype is None:
        return _split_bytes(binary, count, max_bytes)
    if size != count * SIDE * SIDE * 4:
        raise V2Error(400, f'Binary "{spec.name}" of shape [{count}, {SIDE}, {SIDE}] is '
                           f"{count * SIDE * SIDE * 4} bytes (little-endian float32).")
    return np.frombuffer(binary, dtype=spec.dtype).reshape(count, SIDE, SIDE)


def _batch_size(shape, spec: TensorSpec, max_batch: int) -> int:
    """The N of a shape that must match ``spec`` ([-1, 28, 28] or [-1]), at most max_batch."""
    fits = (isinstance(shape, list) and len(shape) == len(spec.shape)
            and all(isinstance(d, int) and not isinstance(d, bool) for d in shape)
            and all(d == want for d, want in zip(shape[1:], spec.shape[1:])))
    if not fits:
        example = ", ".join(["N", *map(str, spec.shape[1:])])
        raise V2Error(400, f'Input "{spec.name}" has shape {list(spec.shape)}: send [{example}] '
                           "for N images.")
    if not 1 <= shape[0] <= max_batch:
        raise V2Error(400, f"A request carries 1 to {max_batch} images; split larger batches.")
    return shape[0]


def _json_data(data, spec: TensorSpec, count: int, max_bytes: int) -> np.ndarray | list[bytes]:
    """JSON tensor data (flat or nested, row-major) as pixels (N, 28, 28) or N byte strings."""
    if spec.dtype is None:
        if (not isinstance(data, list) or len(data) != count
                or not all(isinstance(item, str) for item in data)):
            raise V2Error(400, f'Input "{spec.name}" must hold {count} strings (as shape says); '
                               "send image files as binary data.")
        elements = [item.encode("utf-8") for item in data]
        _check_element_sizes(map(len, elements), max_bytes)
        return elements
    # Flat (count * 784 numbers) or nested (count lists): a wrong length is refused before
    # numpy reads a number.
    fits = isinstance(data, list) and len(data) in (count, count * SIDE * SIDE)
    try:
        array = np.array(data) if fits else np.array(())
    except (ValueError, TypeError):  # ragged lists
        array = np.array(())
    if array.dtype.kind not in "iuf" or array.size != count * SIDE * SIDE:
        raise V2Error(400, f'Input "{spec.name}" must hold {count * SIDE * SIDE} numbers '
                           f"({count} x {SIDE} x {SIDE}, as shape says).")
    return array.astype(np.float32).reshape(count, SIDE, SIDE)


def _split_bytes(binary: memoryview, count: int, max_bytes: int) -> list[bytes]:
    """A binary BYTES tensor: ``count`` elements, each a uint32 LE length and that many bytes."""
    elements, offset = [], 0
    for _ in range(count):
        if offset + LENGTH_PREFIX > len(binary):
            break
        length = int.from_bytes(binary[offset:offset + LENGTH_PREFIX], "little")
        offset += LENGTH_PREFIX
        _check_element_sizes([length], max_bytes)
        elements.append(bytes(binary[offset:offset + length]))
        offset += length
    if len(elements) != count or offset != len(binary):
        raise V2Error(400, f"Binary BYTES data must be exactly {count} elements, each a 4-byte "
                           "little-endian length followed by that many bytes.")
    return elements


def _check_element_sizes(lengths, max_bytes: int) -> None:
    if any(length > max_bytes for length in lengths):
        raise V2Error(400, f"An image is larger than the limit of {max_bytes} bytes.")


def _requested_outputs(query: dict) -> list[tuple[str, bool]]:
    """(output name, as binary?) in the order asked; DEFAULT_OUTPUTS when none is named."""
    parameters = query.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise V2Error(400, 'The request "parameters" must be an object.')
    default_binary = parameters.get("binary_data_output") is True
    asked = query.get("outputs")
    if asked is None:
        return [(name, default_binary) for name in DEFAULT_OUTPUTS]
    if not isinstance(asked, list) or not asked:
        raise V2Error(400, f'"outputs" must list some of {OUTPUT_NAMES}, or be left out.')
    wanted = []
    for output in asked:
        if not isinstance(output, dict) or not isinstance(output.get("name"), str) \
                or output["name"] not in OUTPUTS:
            raise V2Error(400, f"The outputs are {OUTPUT_NAMES}.")
        output_parameters = output.get("parameters") or {}
        binary = (output_parameters.get("binary_data", default_binary)
                  if isinstance(output_parameters, dict) else default_binary)
        wanted.append((output["name"], binary is True))
    return wanted


def _pixels(pixels: np.ndarray) -> np.ndarray:
    """The pixels, refused unless every value is in [0, 1] (NaN included)."""
    if not ((pixels >= 0) & (pixels <= 1)).all():
        raise V2Error(400, 'Input "pixels" must be in [0, 1]: ink bright on black, like '
                           "MNIST's bytes / 255.")
    return pixels


def _refuse_image(index: int, error: imaging.ImageError) -> None:
    """The first image file that /predict's pipeline refuses fails the request."""
    raise V2Error(400, f"Image {index}: {error}", error.code) from error


def _infer_response(model_name: str, version: str, request_id: str | None,
                    outputs: list[tuple[str, bool]], tensors: dict) -> InferAnswer:
    """The $inference_response; binary outputs follow the JSON, as the extension says."""
    entries, chunks = [], []
    for name, binary in outputs:
        spec = OUTPUTS[name]
        array = np.asarray(tensors[name], dtype=spec.dtype)
        entry = {"name": name, "datatype": spec.datatype, "shape": list(array.shape)}
        if binary:
            chunks.append(array.tobytes())
            entry["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            entry["data"] = array.ravel()  # orjson writes numpy arrays itself
        entries.append(entry)
    body = {"model_name": model_name, "model_version": version}
    if request_id is not None:
        body["id"] = request_id
    body["outputs"] = entries
    header = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    if not chunks:
        return InferAnswer(header, "application/json")
    return InferAnswer(b"".join([header, *chunks]), "application/octet-stream", str(len(header)))
