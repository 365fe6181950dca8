"""Request bodies, read within the app's limits; shared by both protocols' views.

Flask refuses a body over ``MAX_CONTENT_LENGTH`` (one upload, ``MAX_UPLOAD_BYTES``) with 413
before reading it; a batch raises its own limit with ``allow_batch_body``.
"""

from __future__ import annotations

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

#: Bytes a batch's body may hold beyond its files: multipart framing, or V2's JSON header.
FRAMING_BYTES = 64 * 1024


def allow_batch_body(files: int, file_bytes: int) -> None:
    """Let this request's body hold ``files`` files of ``file_bytes`` each, plus framing: a
    batch gets a larger limit than one upload; each file is still held to the upload limit."""
    request.max_content_length = files * file_bytes + FRAMING_BYTES


def check_streamed_body() -> None:
    """413 for a body without Content-Length (chunked) that reached the limit.

    werkzeug stops reading such a body at the limit without an error (under gunicorn, which
    terminates chunked input itself), so the rest would be silently cut off. A body of exactly
    the limit is refused too: it cannot be told apart.
    """
    if request.content_length is None and getattr(request.stream, "is_exhausted", False):
        raise RequestEntityTooLarge()
