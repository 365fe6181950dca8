"""The OpenAPI 3 description of the service (GET /openapi.json); tests hold it to the routes."""

from __future__ import annotations

from collections.abc import Mapping

TEXT = {"type": "string"}
IMAGE_TYPES = ["image/png", "image/jpeg", "image/gif", "image/bmp", "image/webp", "image/tiff"]


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _content(media_type: str, schema: dict, description: str) -> dict:
    return {"description": description, "content": {media_type: {"schema": schema}}}


def _json(schema_name: str, description: str) -> dict:
    return _content("application/json", _ref(schema_name), description)


def _errors(*statuses: int) -> dict:
    reasons = {
        400: "Missing field, empty upload, or not a decodable image.",
        404: "No such path.",
        405: "Method not allowed.",
        413: "Too many bytes, too many pixels, or too many files.",
        415: "Unsupported Content-Type or image format.",
        422: "not_a_digit: the image holds ink that the model does not take for a digit "
             "(the closest answer is in `closest`; ?plain=1 asks for it as the answer); or "
             "no_digit_found: the image is blank, uniformly inked or holds too little ink for "
             "a digit (or, for a number, more digits than allowed).",
        503: "The model is not ready (see /readyz), or the server is busy (`overloaded`, "
             "`server_busy`, with Retry-After) or short of memory (`unavailable`).",
    }
    return {str(s): _json("Error", reasons[s]) for s in statuses}


def openapi_document(config: Mapping) -> dict:
    """The document, with this app's limits written into the descriptions."""
    limits = (f"Limits: {config['MAX_UPLOAD_BYTES']} bytes per image, "
              f"{config['MAX_IMAGE_PIXELS']} pixels per image.")
    image_upload = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["image"],
                           "properties": {"image": {"type": "string", "format": "binary"}}},
            },
            **{t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES},
        },
    }
    batch_upload = {
        "required": True,
        "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["images"],
            "properties": {"images": {
                "type": "array", "maxItems": config["MAX_BATCH_FILES"],
                "items": {"type": "string", "format": "binary"},
            }},
        }}},
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "digitgrad",
            "version": "1",
            "description": "Handwritten-digit recognition. Every error is answered as "
                           '{"error": {"code": ..., "message": ...}}.',
        },
        "paths": {
            "/predict": {"post": {
                "summary": "Predict the digit in one image.",
                "description": "The image as multipart/form-data in the field `image`, or as "
                               "the raw body with an image/* Content-Type: PNG, JPEG, GIF, BMP, "
                               "WebP or TIFF. " + limits,
                "parameters": [{
                    "name": "debug", "in": "query", "required": False,
                    "description": "1 adds `debug_image`, the 28x28 image the model saw.",
                    "schema": {"type": "string", "enum": ["0", "1"]},
                }, PLAIN, EXPLAIN],
                "requestBody": image_upload,
                "responses": {"200": _json("Prediction", "The prediction."),
                              **_errors(400, 413, 415, 422, 503)},
            }},
            "/predict/number": {"post": {
                "summary": "Read a written number: its digits left to right.",
                "description": "One image of a number, sent as for /predict. The ink is split "
                               "into digits left to right (separated digits; touching ones may "
                               "be read as one), all predicted in one forward pass. " + limits,
                "parameters": [{
                    "name": "debug", "in": "query", "required": False,
                    "description": "1 adds each digit's `debug_image`, the 28x28 image the "
                                   "model saw.",
                    "schema": {"type": "string", "enum": ["0", "1"]},
                }, PLAIN],
                "requestBody": image_upload,
                "responses": {"200": _json("NumberPrediction", "The number and its digits."),
                              **_errors(400, 413, 415, 422, 503)},
            }},
            "/predict/batch": {"post": {
                "summary": "Predict several images in one forward pass.",
                "description": f"Up to {config['MAX_BATCH_FILES']} files in the multipart field "
                               "`images`. Answers in the same order; a file that cannot be "
                               "read, or that is not a digit (`not_a_digit`, with `closest`), "
                               "gets an error entry and the others are still predicted. "
                               + limits,
                "parameters": [PLAIN, EXPLAIN],
                "requestBody": batch_upload,
                "responses": {"200": _json("BatchPrediction", "One entry per file, in order."),
                              **_errors(400, 413, 415, 503)},
            }},
            "/healthz": {"get": {
                "summary": "Liveness: the process answers; the model is not consulted.",
                "responses": {"200": _json("Status", "Alive.")},
            }},
            "/readyz": {"get": {
                "summary": "Readiness: the model is loaded and passed its self-test.",
                "responses": {"200": _json("Status", "Ready."), **_errors(503)},
            }},
            "/model": {"get": {
                "summary": "The loaded model: architecture, size, preprocessing, training, "
                           "sha256 and load time.",
                "responses": {"200": _json("ModelInfo", "The model.")},
            }},
            "/metrics": {"get": {
                "summary": "Prometheus metrics (text exposition format), all workers summed.",
                "responses": {"200": _content("text/plain", TEXT, "Metrics.")},
            }},
            "/openapi.json": {"get": {
                "summary": "This document.",
                "responses": {"200": _content("application/json", {"type": "object"},
                                              "OpenAPI 3 document.")},
            }},
            "/": {"get": {
                "summary": "The drawing page: draw or drop a digit, see the prediction.",
                "responses": {"200": _content("text/html", TEXT, "HTML page.")},
            }},
            "/static/{filename}": {"get": {
                "summary": "The drawing page's assets.",
                "parameters": [{"name": "filename", "in": "path", "required": True,
                                "schema": {"type": "string"}}],
                "responses": {"200": {"description": "The file."}, **_errors(404)},
            }},
            **_v2_paths(config),
        },
        "components": {"schemas": {**SCHEMAS, **V2_SCHEMAS}},
    }


#: ?plain=1: answer the closest digit whatever the upload holds (never not_a_digit).
PLAIN = {
    "name": "plain", "in": "query", "required": False,
    "description": "1: the closest digit as the answer whatever the image holds, instead of "
                   "422 not_a_digit (a model file without a decision never refuses).",
    "schema": {"type": "string", "enum": ["0", "1"]},
}
IS_DIGIT = {"type": "boolean", "description": "Whether the model takes the image for a digit "
                                             "at all (the model file's decision)."}
DIGIT_PROBABILITY = {"type": "number", "minimum": 0, "maximum": 1,
                     "description": "How sure the model is that the image is a digit at all "
                                    "(1 for a model file without a decision)."}
EXPLAIN = {
    "name": "explain", "in": "query", "required": False,
    "description": "1 adds `attributions`: which pixels made the answer (integrated gradients "
                   "of the predicted digit's logit over the 28x28 image the model saw, from a "
                   "black baseline). It costs a few milliseconds of CPU more per image.",
    "schema": {"type": "string", "enum": ["0", "1"]},
}

SCHEMAS = {
    "Prediction": {
        "type": "object",
        "required": ["digit", "confidence", "probabilities", "is_digit", "digit_probability",
                     "model"],
        "properties": {
            "digit": {"type": "integer", "minimum": 0, "maximum": 9,
                      "description": "The class index (a digit, for MNIST models)."},
            "label": {"type": "string", "description": "The class name, when the model file "
                                                        "names its classes (Fashion-MNIST)."},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1,
                           "description": "The probability of `digit`: how often an answer "
                                          "given with this confidence is right."},
            "probabilities": {"type": "array", "minItems": 10, "maxItems": 10,
                              "items": {"type": "number", "minimum": 0, "maximum": 1},
                              "description": "One per digit 0-9; they sum to "
                                             "`digit_probability` (1 without a decision)."},
            "is_digit": IS_DIGIT,
            "digit_probability": DIGIT_PROBABILITY,
            "model": {"type": "string", "pattern": "^[0-9a-f]{12}$",
                      "description": "The first 12 hex digits of the model file's sha256."},
            "debug_image": {"type": "string", "format": "byte",
                            "description": "With ?debug=1: base64 PNG, the 28x28 input."},
            "attributions": {
                "type": "array", "minItems": 28, "maxItems": 28,
                "items": {"type": "array", "minItems": 28, "maxItems": 28,
                          "items": {"type": "number"}},
                "description": "With ?explain=1: 28 rows of 28 numbers over the image the model "
                               "saw, in logit units rounded to 4 decimal places; positive is "
                               "evidence for `digit`, negative against it, 0 where there is no "
                               "ink. They add up to the logit of the image minus that of a "
                               "black image, to about 1% (integrated gradients, 32 steps)."},
        },
    },
    "NumberPrediction": {
        "type": "object",
        "required": ["number", "digits", "model"],
        "properties": {
            "number": {"type": "string", "pattern": "^[0-9]+$",
                       "description": "The digits read, left to right, as a string: leading "
                                      "zeros are kept."},
            "digits": {"type": "array", "minItems": 1, "items": {
                "type": "object",
                "required": ["digit", "confidence", "is_digit", "digit_probability", "box"],
                "properties": {
                    "digit": {"type": "integer", "minimum": 0, "maximum": 9},
                    "label": {"type": "string", "description": "The class name, when the "
                                                                "model file names its classes."},
                    "confidence": {"type": "number", "minimum": 0, "maximum": 1},
                    "is_digit": IS_DIGIT,
                    "digit_probability": DIGIT_PROBABILITY,
                    "box": {"type": "array", "minItems": 4, "maxItems": 4,
                            "items": {"type": "integer", "minimum": 0},
                            "description": "[x, y, width, height] of the digit's ink, in the "
                                           "uploaded image's pixels."},
                    "debug_image": {"type": "string", "format": "byte",
                                    "description": "With ?debug=1: base64 PNG, the 28x28 "
                                                   "input."},
                },
            }},
            "model": {"type": "string", "pattern": "^[0-9a-f]{12}$"},
        },
    },
    "BatchPrediction": {
        "type": "object",
        "required": ["predictions"],
        "properties": {"predictions": {"type": "array", "items": {
            "oneOf": [_ref("Prediction"), _ref("Error")]}}},
    },
    "Error": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "Stable, machine-readable: "
                         "bad_request, missing_field, empty_image, invalid_image, "
                         "unsupported_format, unsupported_media_type, image_too_large, "
                         "request_too_large, request_timeout, too_many_files, "
                         "too_many_digits, no_digit_found, not_a_digit, not_found, "
                         "method_not_allowed, not_ready, overloaded, server_busy, "
                         "unavailable, uri_too_long, headers_too_large, expectation_failed, "
                         "not_implemented, internal_error."},
                "message": {"type": "string", "description": "For people; says what to do."},
                "closest": {"type": "object", "description": "not_a_digit only: the answer "
                            "the image would have had (a Prediction, or for /predict/number a "
                            "NumberPrediction whose digits' is_digit say which pieces are not "
                            "digits)."},
            },
        }},
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok", "ready"]},
                       "model": {"type": "string"},
                       "reload_error": {
                           "type": "object", "required": ["file", "error"],
                           "description": "The last model reload that was refused; the "
                                          "previous model keeps serving.",
                           "properties": {"file": TEXT, "error": TEXT}}},
    },
    "ModelInfo": {
        "type": "object",
        "required": ["id", "sha256", "architecture", "parameters", "preprocessing",
                     "loaded_at", "load_seconds", "ready"],
        "properties": {
            "id": {"type": "string"},
            "sha256": {"type": "string"},
            "file": {"type": "string"},
            "architecture": {"type": "object"},
            "parameters": {"type": "integer"},
            "preprocessing": {"type": "object", "nullable": True},
            "training": {"description": "Training config, as the trainer wrote it."},
            "metrics": {"description": "Training and test metrics, as the trainer wrote them."},
            "data": {"description": "The data the model was trained on."},
            "created": {"description": "When the model file was written."},
            "decision": {"description": "The not-a-digit decision written by the trainer "
                                        "({\"kind\", \"threshold\", \"temperature\"}), "
                                        "or null: the model calls everything a digit."},
            "classes": {"type": "array", "minItems": 10, "maxItems": 10, "items": TEXT,
                        "description": "The class names, when the model file has them."},
            "loaded_at": {"type": "string", "format": "date-time"},
            "load_seconds": {"type": "number"},
            "ready": {"type": "boolean"},
        },
    },
}


# --- the Open Inference Protocol (V2) routes --------------------------------------------------


def _v2_errors(*statuses: int) -> dict:
    reasons = {
        400: "Bad shape, datatype or data, a limit exceeded, or an image the pipeline refuses.",
        404: "No such model or version.",
        413: "The body is over the limit (checked before it is parsed).",
        503: "The model is not ready (see /v2/health/ready), or the server is busy (with "
             "Retry-After).",
    }
    return {str(s): _json("V2Error", reasons[s]) for s in statuses}


def _v2_model_paths(suffix: str, operation: dict) -> dict:
    """The same operation at /v2/models/{name}<suffix> and .../versions/{version}<suffix>."""
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "enum": ["digitgrad", "digitgrad-image"]}}
    version = {"name": "version", "in": "path", "required": True,
               "description": "The model file's id (GET /model).", "schema": TEXT}
    method = "post" if suffix.endswith("infer") else "get"
    return {
        f"/v2/models/{{name}}{suffix}": {method: {**operation, "parameters": [name]}},
        f"/v2/models/{{name}}/versions/{{version}}{suffix}": {
            method: {**operation, "parameters": [name, version]}},
    }


def _v2_paths(config: Mapping) -> dict:
    """Health, metadata and inference of the Open Inference Protocol (KServe V2), REST."""
    binary_body = {"type": "string", "format": "binary",
                   "description": "The binary tensor data extension: the JSON request (its "
                                  "length in the Inference-Header-Content-Length header), "
                                  "then each input's bytes."}
    infer = {
        "summary": "Inference (Open Inference Protocol).",
        "description": "`digitgrad` takes `pixels` FP32 [N, 28, 28] in [0, 1], ink bright on "
                       "black; `digitgrad-image` takes `image` BYTES [N], each element an "
                       "image file read as POST /predict reads it. Both answer "
                       "`probabilities` FP32 [N, 10], `digit` INT64 [N], `is_digit` BOOL [N] "
                       "and `digit_probability` FP32 [N] (the model file's not-a-digit "
                       "decision; never an error: the protocol has none for it), and, only when "
                       "named in `outputs`, `attributions` FP32 [N, 28, 28] (as "
                       "/predict?explain=1, unrounded). "
                       f"N is 1 to {config['MAX_TENSOR_IMAGES']} pixel images, or 1 to "
                       f"{config['MAX_BATCH_FILES']} image files of at most "
                       f"{config['MAX_UPLOAD_BYTES']} bytes each. Tensors as JSON "
                       "or binary (binary_data_size, binary_data, binary_data_output).",
        "requestBody": {"required": True, "content": {
            "application/json": {"schema": _ref("V2InferenceRequest")},
            "application/octet-stream": {"schema": binary_body},
        }},
        "responses": {
            "200": {"description": "The outputs; binary ones after the JSON, whose length is "
                                   "then in the Inference-Header-Content-Length header.",
                    "content": {"application/json": {"schema": _ref("V2InferenceResponse")},
                                "application/octet-stream": {"schema": binary_body}}},
            **_v2_errors(400, 404, 413, 503),
        },
    }
    return {
        "/v2": {"get": {
            "summary": "Server metadata (Open Inference Protocol).",
            "responses": {"200": _json("V2ServerMetadata", "Name, version, extensions.")},
        }},
        "/v2/health/live": {"get": {
            "summary": "Server liveness (Open Inference Protocol).",
            "responses": {"200": _json("V2Live", "Alive.")},
        }},
        "/v2/health/ready": {"get": {
            "summary": "Server readiness (Open Inference Protocol).",
            "responses": {"200": _json("V2Ready", "Ready."),
                          "503": _json("V2Ready", "Not ready.")},
        }},
        **_v2_model_paths("", {
            "summary": "Model metadata: versions, inputs and outputs (Open Inference Protocol).",
            "responses": {"200": _json("V2ModelMetadata", "The model."), **_v2_errors(404)},
        }),
        **_v2_model_paths("/ready", {
            "summary": "Model readiness (Open Inference Protocol).",
            "responses": {"200": _json("V2ModelReady", "Ready."),
                          "503": _json("V2ModelReady", "Not ready."), **_v2_errors(404)},
        }),
        **_v2_model_paths("/infer", infer),
    }


_V2_TENSOR = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {"name": TEXT, "datatype": {"type": "string", "enum": ["FP32", "INT64",
                                                                          "BOOL", "BYTES"]},
                   "shape": {"type": "array", "items": {"type": "integer"}}},
}
_V2_PARAMETERS = {"type": "object", "additionalProperties": True}
_V2_DATA = {"type": "array", "description": "Row-major, flat or nested.", "items": {}}

V2_SCHEMAS = {
    "V2Error": {"type": "object", "required": ["error"], "properties": {"error": TEXT}},
    "V2ServerMetadata": {
        "type": "object", "required": ["name", "version", "extensions"],
        "properties": {"name": TEXT, "version": TEXT,
                       "extensions": {"type": "array", "items": TEXT}},
    },
    "V2Live": {"type": "object", "required": ["live"],
               "properties": {"live": {"type": "boolean"}}},
    "V2Ready": {"type": "object", "required": ["ready"],
                "properties": {"ready": {"type": "boolean"}}},
    "V2ModelReady": {"type": "object", "required": ["name", "ready"],
                     "properties": {"name": TEXT, "ready": {"type": "boolean"}}},
    "V2ModelMetadata": {
        "type": "object", "required": ["name", "versions", "platform", "inputs", "outputs"],
        "properties": {"name": TEXT, "versions": {"type": "array", "items": TEXT},
                       "platform": TEXT,
                       "inputs": {"type": "array", "items": _V2_TENSOR},
                       "outputs": {"type": "array", "items": _V2_TENSOR}},
    },
    "V2InferenceRequest": {
        "type": "object", "required": ["inputs"],
        "properties": {
            "id": TEXT,
            "parameters": _V2_PARAMETERS,
            "inputs": {"type": "array", "minItems": 1, "maxItems": 1, "items": {
                **_V2_TENSOR, "properties": {**_V2_TENSOR["properties"],
                                             "parameters": _V2_PARAMETERS, "data": _V2_DATA}}},
            "outputs": {"type": "array", "items": {
                "type": "object", "required": ["name"],
                "properties": {"name": {"type": "string",
                                        "enum": ["probabilities", "digit", "is_digit",
                                                 "digit_probability", "attributions"]},
                               "parameters": _V2_PARAMETERS}}},
        },
    },
    "V2InferenceResponse": {
        "type": "object", "required": ["model_name", "model_version", "outputs"],
        "properties": {
            "model_name": TEXT, "model_version": TEXT,
            "id": {"type": "string", "description": "The request's id, when it had one."},
            "outputs": {"type": "array", "items": {
                **_V2_TENSOR, "properties": {**_V2_TENSOR["properties"],
                                             "parameters": _V2_PARAMETERS, "data": _V2_DATA}}},
        },
    },
}
