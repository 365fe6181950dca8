"""One JSON error envelope for every error status: ``{"error": {"code": ..., "message": ...}}``.

Messages are fixed strings or built from the app's own limits, never from the request, so
nothing a client sends is echoed back, and no traceback ever leaves the process.
"""

from __future__ import annotations

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import HTTPException


class ApiError(Exception):
    """An error answered as-is: ``status``, a stable machine ``code`` and a user-facing message.

    Same shape as ``server.imaging.ImageError`` (``.status``, ``.code``, ``str(e)``), so one
    handler serves both.
    """

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status = status
        self.code = code


# Codes and messages for the statuses werkzeug raises itself (routing, body size, ...).
HTTP_ERRORS = {
    400: ("bad_request", "The request could not be understood."),
    404: ("not_found", "No such endpoint; GET /openapi.json lists them."),
    405: ("method_not_allowed", "This endpoint does not accept that method."),
    413: ("request_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Unsupported Content-Type."),
    500: ("internal_error", "Internal server error; it has been logged."),
    503: ("not_ready", "The service is not ready."),
}

#: Endpoints whose client errors count as rejected uploads in the metrics.
REJECTION_ENDPOINTS = ("api.predict", "api.predict_batch")


def error_body(code: str, message: str) -> dict:
    """The envelope's content, also used for per-file errors in a batch."""
    return {"error": {"code": code, "message": message}}


def error_response(status: int, code: str, message: str):
    """A JSON error response."""
    response = jsonify(error_body(code, message))
    response.status_code = status
    return response


def _count_rejection(code: str) -> None:
    if request.endpoint in REJECTION_ENDPOINTS:
        current_app.extensions["digitgrad"].metrics.observe_rejection(code)


def handle_api_error(exc):
    """ApiError and imaging's ImageError: status, code and message as raised."""
    _count_rejection(exc.code)
    return error_response(exc.status, exc.code, str(exc))


def handle_http_exception(exc: HTTPException):
    """werkzeug's errors (404, 405, 413, ...) in the envelope, keeping headers such as Allow."""
    if exc.code is None or exc.code < 400:  # redirects and the like are not errors
        return exc
    code, message = HTTP_ERRORS.get(
        exc.code, (exc.name.lower().replace(" ", "_"), f"{exc.name}.")
    )
    if exc.code == 413 and request.max_content_length:
        limit = request.max_content_length
        message = f"The request body is larger than the limit of {limit} bytes."
    elif exc.code == 405 and getattr(exc, "valid_methods", None):
        message = f"This endpoint accepts {', '.join(sorted(exc.valid_methods))}."
    if exc.code in (413, 415):
        _count_rejection(code)
    response = error_response(exc.code, code, message)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def handle_unexpected(exc: Exception):
    """Anything else is a bug: log it with its traceback, answer a bare 500."""
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, *HTTP_ERRORS[500])


def register_error_handlers(app: Flask, *domain_errors: type[Exception]) -> None:
    """JSON for every error: ``domain_errors`` (with .status/.code) as raised, the rest mapped."""
    for cls in (ApiError, *domain_errors):
        app.register_error_handler(cls, handle_api_error)
    app.register_error_handler(HTTPException, handle_http_exception)
    app.register_error_handler(Exception, handle_unexpected)
