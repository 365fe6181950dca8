"""One JSON error envelope for every error status: ``{"error": {"code": ..., "message": ...}}``.

Messages are fixed strings or built from the app's own limits, never from the request, so
nothing a client sends is echoed back, and no traceback ever leaves the process.
"""

from __future__ import annotations

from flask import Flask, current_app, jsonify, request
from werkzeug.exceptions import ClientDisconnected, HTTPException

from server.inference import Busy
from server.state import get_serving


class ApiError(Exception):
    """An error answered as-is: ``status``, a stable machine ``code`` and a user-facing message.

    Domain errors without a status (``server.imaging.ImageError``: ``.code``, ``str(e)``) get
    theirs from DOMAIN_STATUSES, so one handler serves both.
    """

    def __init__(self, status: int, code: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.details = details or {}  # more of the answer, beside code and message


# Codes and messages for the statuses werkzeug raises itself (routing, body size, ...).
HTTP_ERRORS = {
    400: ("bad_request", "The request could not be understood."),
    404: ("not_found", "No such endpoint; GET /openapi.json lists them."),
    405: ("method_not_allowed", "This endpoint does not accept that method."),
    408: ("request_timeout", "The request body stopped arriving before it was complete; "
                             "send the request again."),
    413: ("request_too_large", "The request body is too large."),
    415: ("unsupported_media_type", "Unsupported Content-Type."),
    500: ("internal_error", "Internal server error; it has been logged."),
    503: ("not_ready", "The service is not ready."),
}
#: An OSError (out of disk, a failing device) or a MemoryError while a request is read or
#: served: the server's trouble, likely passing, not the client's nor a bug.
UNAVAILABLE = ("unavailable", "The server is short of memory or storage right now; send the "
                              "request again in a moment.")
#: Seconds a client is asked to wait after a 503 (Retry-After).
RETRY_AFTER = 1

#: HTTP statuses of the domain errors' codes (imaging and the inference service know no HTTP).
DOMAIN_STATUSES = {
    "empty_image": 400,
    "invalid_image": 400,
    "unsupported_format": 415,
    "image_too_large": 413,
    "no_digit_found": 422,
    "too_many_digits": 422,
}

#: Endpoints whose client errors count as rejected uploads in the metrics.
REJECTION_ENDPOINTS = ("api.predict", "api.predict_batch", "api.predict_number")


def error_body(code: str, message: str, details: dict | None = None) -> dict:
    """The envelope's content, also used for per-file errors in a batch; ``details`` adds
    fields beside code and message (not_a_digit's ``closest`` answer)."""
    return {"error": {"code": code, "message": message, **(details or {})}}


def error_response(status: int, code: str, message: str, details: dict | None = None):
    """A JSON error response."""
    response = jsonify(error_body(code, message, details))
    response.status_code = status
    return response


def _count_rejection(code: str) -> None:
    if request.endpoint in REJECTION_ENDPOINTS:
        get_serving().metrics.observe_rejection(code)


def status_of(exc: Exception) -> int:
    """An ApiError's own status, or the one DOMAIN_STATUSES gives a domain error's code."""
    if isinstance(exc, ApiError):
        return exc.status
    return DOMAIN_STATUSES.get(getattr(exc, "code", ""), 400)


def handle_api_error(exc):
    """ApiError and imaging's ImageError: status (mapped from the code), code and message."""
    _count_rejection(exc.code)
    return error_response(status_of(exc), exc.code, str(exc), getattr(exc, "details", None))


def _read_timed_out(exc: HTTPException) -> bool:
    """werkzeug reports a body read that hit the socket's deadline (gunicorn.conf.py's
    CLIENT_READ_TIMEOUT) as a disconnect; the client may still be there to read a 408."""
    return isinstance(exc, ClientDisconnected) and isinstance(exc.__context__, TimeoutError)


def _too_large_message(exc: HTTPException) -> str:
    """What was too large: werkzeug raises the same bare 413 for the body, the number of
    multipart parts and one text field's size; where it was raised tells them apart."""
    frame = exc.__traceback__
    while frame is not None and frame.tb_next is not None:
        frame = frame.tb_next
    raised_in = frame.tb_frame.f_code.co_name if frame is not None else ""
    if raised_in == "next_event":  # werkzeug.sansio.multipart: one part more than allowed
        return (f"The form has more than {request.max_form_parts} parts; send only the "
                "image field.")
    if raised_in in ("parse", "receive_data"):  # a text part held in memory grew too big
        return (f"A form text field is larger than the limit of "
                f"{request.max_form_memory_size} bytes; send the image as a file field.")
    if request.max_content_length:
        return f"The request body is larger than the limit of {request.max_content_length} bytes."
    return HTTP_ERRORS[413][1]


def handle_http_exception(exc: HTTPException):
    """werkzeug's errors (404, 405, 413, ...) in the envelope, keeping headers such as Allow."""
    if exc.code is None or exc.code < 400:  # redirects and the like are not errors
        return exc
    status = 408 if _read_timed_out(exc) else exc.code
    code, message = http_error(exc, status)
    if status == 413:
        message = _too_large_message(exc)
    elif status == 405 and getattr(exc, "valid_methods", None):
        message = f"This endpoint accepts {', '.join(sorted(exc.valid_methods))}."
    if status in (413, 415) or code == "server_busy":
        _count_rejection(code)
    response = error_response(status, code, message)
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def http_error(exc: HTTPException, status: int) -> tuple[str, str]:
    """(code, message) of a werkzeug error: our own carry theirs (``error_code``), werkzeug's
    come from HTTP_ERRORS (never its descriptions, which may quote the request)."""
    if getattr(exc, "error_code", None):
        return exc.error_code, exc.description
    return HTTP_ERRORS.get(status, (exc.name.lower().replace(" ", "_"), f"{exc.name}."))


def log_unavailable(exc: Exception) -> None:
    """Log an OSError or MemoryError met while serving, with its traceback."""
    current_app.logger.error("%s on %s %s", type(exc).__name__, request.method, request.path,
                             exc_info=exc)


def handle_unavailable(exc: Exception):
    """OSError and MemoryError: 503 with Retry-After, logged."""
    log_unavailable(exc)
    response = error_response(503, *UNAVAILABLE)
    response.headers["Retry-After"] = str(RETRY_AFTER)
    return response


def handle_unexpected(exc: Exception):
    """Anything else is a bug: log it with its traceback, answer a bare 500."""
    current_app.logger.exception("unhandled error on %s %s", request.method, request.path)
    return error_response(500, *HTTP_ERRORS[500])


def handle_busy(exc: Busy):
    """Shed (server.inference.ComputeSlots): 503 with Retry-After, counted as a rejection."""
    get_serving().metrics.observe_rejection(exc.code)
    response = error_response(503, exc.code, str(exc))
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def register_error_handlers(app: Flask, *domain_errors: type[Exception]) -> None:
    """JSON for every error: ``domain_errors`` (a .code; status from DOMAIN_STATUSES), ApiError
    as raised, the rest mapped."""
    for cls in (ApiError, *domain_errors):
        app.register_error_handler(cls, handle_api_error)
    app.register_error_handler(Busy, handle_busy)
    app.register_error_handler(HTTPException, handle_http_exception)
    for cls in (OSError, MemoryError):
        app.register_error_handler(cls, handle_unavailable)
    app.register_error_handler(Exception, handle_unexpected)
