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
        422: "No digit found: the image is blank or uniformly inked.",
        503: "The model is not ready (see /readyz).",
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
                }],
                "requestBody": image_upload,
                "responses": {"200": _json("Prediction", "The prediction."),
                              **_errors(400, 413, 415, 422, 503)},
            }},
            "/predict/batch": {"post": {
                "summary": "Predict several images in one forward pass.",
                "description": f"Up to {config['MAX_BATCH_FILES']} files in the multipart field "
                               "`images`. Answers in the same order; a file that cannot be "
                               "read gets an error entry and the others are still predicted. "
                               + limits,
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
        },
        "components": {"schemas": SCHEMAS},
    }


SCHEMAS = {
    "Prediction": {
        "type": "object",
        "required": ["digit", "confidence", "probabilities", "model"],
        "properties": {
            "digit": {"type": "integer", "minimum": 0, "maximum": 9},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1,
                           "description": "The probability of `digit`."},
            "probabilities": {"type": "array", "minItems": 10, "maxItems": 10,
                              "items": {"type": "number", "minimum": 0, "maximum": 1},
                              "description": "One per digit 0-9; they sum to 1."},
            "model": {"type": "string", "pattern": "^[0-9a-f]{12}$",
                      "description": "The first 12 hex digits of the model file's sha256."},
            "debug_image": {"type": "string", "format": "byte",
                            "description": "With ?debug=1: base64 PNG, the 28x28 input."},
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
                         "request_too_large, too_many_files, no_digit_found, not_found, "
                         "method_not_allowed, not_ready, internal_error."},
                "message": {"type": "string", "description": "For people; says what to do."},
            },
        }},
    },
    "Status": {
        "type": "object",
        "required": ["status"],
        "properties": {"status": {"type": "string", "enum": ["ok", "ready"]},
                       "model": {"type": "string"}},
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
            "loaded_at": {"type": "string", "format": "date-time"},
            "load_seconds": {"type": "number"},
            "ready": {"type": "boolean"},
        },
    },
}
