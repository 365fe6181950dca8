"""Request bodies: read within the app's limits, held in memory, bounded in bytes per worker;
shared by both protocols' views.

Flask refuses a body over ``MAX_CONTENT_LENGTH`` (one upload, ``MAX_UPLOAD_BYTES``) with 413
before reading it; a batch raises its own limit with ``allow_batch_body``.

werkzeug spools each uploaded file over 500 kB to a temporary file: in a container /tmp is a
small tmpfs shared with other files, and a full batch (16 x 5 MB) filled it (ENOSPC: 500s).
Uploads are bounded by the body limits above, so here they simply stay in memory
(``InMemoryRequest``).

The limits bound one body; ``BodyBudget`` bounds the bodies one worker holds at once, whatever
its thread count: a request's body counts against MAX_BODY_BYTES_PER_WORKER from its first read
to the request's end (its whole Content-Length at once, a chunked body as it arrives), and a
request that would go past it is answered 503 with Retry-After. Refused at once, never waiting:
requests cannot deadlock on each other's bytes, and the bodies admitted are the ones that
complete (counting bytes as they came instead let concurrent large uploads refuse each other
half-way, none completing).

A body whose framing the server cannot parse (a bad chunk size or terminator under gunicorn)
is a 400 here, whatever server reads it.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterable

from flask import Request, request
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, ServiceUnavailable

from server.errors import RETRY_AFTER

#: Bytes a batch's body may hold beyond its files: multipart framing, or V2's JSON header.
FRAMING_BYTES = 64 * 1024


def batch_body_bytes(files: int, file_bytes: int) -> int:
    """The most a batch's body may hold: ``files`` files of ``file_bytes`` each, plus framing."""
    return files * file_bytes + FRAMING_BYTES


def allow_batch_body(files: int, file_bytes: int) -> None:
    """Let this request's body hold ``files`` files of ``file_bytes`` each, plus framing: a
    batch gets a larger limit than one upload; each file is still held to the upload limit."""
    request.max_content_length = batch_body_bytes(files, file_bytes)


def check_streamed_body() -> None:
    """413 for a body without Content-Length (chunked) that reached the limit.

    werkzeug stops reading such a body at the limit without an error (under gunicorn, which
    terminates chunked input itself), so the rest would be silently cut off. A body of exactly
    the limit is refused too: it cannot be told apart.
    """
    if request.content_length is None and getattr(request.stream, "is_exhausted", False):
        raise RequestEntityTooLarge()


class InMemoryRequest(Request):
    """Flask's request, with uploaded files kept in memory instead of temporary files."""

    def _get_file_stream(self, total_content_length, content_type, filename=None,
                         content_length=None):
        return io.BytesIO()


class BodiesOverBudget(ServiceUnavailable):
    """Reading this body would take the worker past its bytes of bodies held at once."""

    error_code = "server_busy"
    description = ("The server is receiving too many request bodies at once; send the "
                   "request again in a moment.")

    def __init__(self) -> None:
        super().__init__(retry_after=RETRY_AFTER)


class MalformedBody(BadRequest):
    """The body's framing (chunked transfer coding) could not be parsed."""

    error_code = "bad_request"
    description = ("The request body is malformed (its chunked framing could not be read): "
                   "send it again, with a Content-Length or valid chunks.")


class BodyBudget:
    """A worker's budget of request-body bytes held at once, shared by all its threads."""

    def __init__(self, max_bytes: int):
        self.max_bytes = max_bytes
        self.held = 0
        self._lock = threading.Lock()

    def take(self, count: int) -> None:
        """Count ``count`` more bytes as held; BodiesOverBudget (nothing taken) past the max."""
        with self._lock:
            if self.held + count > self.max_bytes:
                raise BodiesOverBudget()
            self.held += count

    def give_back(self, count: int) -> None:
        with self._lock:
            self.held -= count

    def wrap(self, wsgi_app: Callable) -> Callable:
        """``wsgi_app`` with every request's body counted against this budget until it ends.

        Flask's ``wsgi_app`` handles the whole request before it returns (the request, its
        data and files are released by then), so the bytes are given back right after.
        """

        def counted_app(environ: dict, start_response: Callable) -> Iterable[bytes]:
            body = CountedBody(environ["wsgi.input"], self, _declared_length(environ))
            environ["wsgi.input"] = body
            try:
                return wsgi_app(environ, start_response)
            finally:
                self.give_back(body.count)

        return counted_app


def _declared_length(environ: dict) -> int | None:
    """The body's Content-Length, or None (chunked, or not a number: the server refuses it)."""
    try:
        return max(int(environ.get("CONTENT_LENGTH") or ""), 0)
    except ValueError:
        return None


class CountedBody:
    """A WSGI input stream whose bytes are taken from a BodyBudget: a body of known length all
    at once at its first read, before any of it is received (a refused client has sent nothing
    yet, with ``Expect: 100-continue`` not even that), a chunked one as its bytes arrive."""

    def __init__(self, stream, budget: BodyBudget, declared: int | None):
        self._stream = stream
        self._budget = budget
        self._declared = declared
        self._started = False
        self.count = 0  #: bytes taken from the budget

    def _take(self, count: int) -> None:
        self._budget.take(count)
        self.count += count

    def _read(self, method: str, *args):
        if not self._started:
            if self._declared is not None:
                self._take(self._declared)
            self._started = True
        data = self._call(method, *args)
        if self._declared is None:
            self._take(sum(map(len, data)) if method == "readlines" else len(data))
        return data

    def _call(self, method: str, *args):
        try:
            return getattr(self._stream, method)(*args)
        except OSError:
            raise  # the client went away or stalled: werkzeug answers those (400, 408)
        except Exception as exc:  # the server's parser refused the framing (gunicorn's errors)
            raise MalformedBody() from exc

    def read(self, size: int = -1) -> bytes:
        return self._read("read", size)

    def readline(self, size: int = -1) -> bytes:
        return self._read("readline", size)

    def readlines(self, hint: int = -1) -> list[bytes]:
        return self._read("readlines", hint)

    def __iter__(self):
        while line := self.readline():
            yield line
