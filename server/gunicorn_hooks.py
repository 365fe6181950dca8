"""What gunicorn.conf.py changes in gunicorn itself: its error pages and ``Expect: 100-continue``.

Imported by gunicorn.conf.py only; the app never needs gunicorn.

* gunicorn answers a request it cannot parse (a bad request line, too long a line or too many
  headers, an unsupported Expect) itself, before the app sees it, with an HTML page quoting the
  offending input. ``json_error_page`` replaces the function that writes those pages
  (``gunicorn.util.write_error``; every worker class calls it), so they answer in the service's
  JSON envelope, with a fixed message per status and nothing of the request in it.
* gunicorn answers ``Expect: 100-continue`` as soon as the headers are parsed, so a client sends
  a body the app then refuses as too large. ``defer_continue`` (a pre_request hook) lets the
  100 go out only when the app starts reading the body, after its size checks: a refused
  request gets its 413 and the connection is closed before a byte of the body is sent.
"""

from __future__ import annotations

import contextlib
import json
from http import HTTPStatus

#: Status -> the envelope's code and message, for the answers gunicorn gives itself.
PAGES = {
    400: ("bad_request", "The request could not be parsed as HTTP/1.1."),
    403: ("forbidden", "The request is not allowed."),
    414: ("uri_too_long", "The request line is too long: shorten the URL."),
    417: ("expectation_failed", "Only the expectation 100-continue is supported."),
    431: ("headers_too_large", "The request headers are too large or too many."),
    500: ("internal_error", "Internal server error; it has been logged."),
    501: ("not_implemented", "The request uses a transfer coding this server does not "
                             "implement: send the body with a Content-Length or chunked."),
}
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def json_error_page(sock, status: int, reason: str, message: str) -> None:
    """``gunicorn.util.write_error``, answering in the JSON envelope. ``message`` (gunicorn's,
    quoting the request) is left out: it is in the log already."""
    from gunicorn.util import write_nonblock

    code, text = PAGES.get(status, PAGES[400] if status < 500 else PAGES[500])
    body = json.dumps({"error": {"code": code, "message": text}}).encode()
    with contextlib.suppress(ValueError):  # gunicorn says "Bad Request" for its 501
        reason = HTTPStatus(status).phrase
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "X-Content-Type-Options: nosniff\r\n\r\n")
    write_nonblock(sock, head.encode("latin-1") + body)


def defer_continue(req) -> None:
    """Before the app runs (pre_request): if the client waits for ``100 Continue``, send it
    when the body is first read instead of now, and close the connection after the answer if
    the body was never asked for (the client may then never send it)."""
    if not getattr(req, "_expected_100_continue", False):
        return
    req._expected_100_continue = False  # gunicorn's wsgi.create would send it right away
    closing = req.must_close
    req.must_close = True
    req.body = ContinueOnRead(req.body, req.unreader.sock, req, closing)


class ContinueOnRead:
    """A request body that sends ``100 Continue`` before its first read."""

    def __init__(self, body, sock, req, closing: bool):
        self._body = body
        self._sock = sock
        self._req = req
        self._closing = closing
        self._sent = False

    def _go_ahead(self) -> None:
        if not self._sent:
            self._sent = True
            self._sock.sendall(CONTINUE)
            self._req.must_close = self._closing  # the body will come: keep-alive as asked

    def read(self, size=None) -> bytes:
        self._go_ahead()
        return self._body.read(size)

    def readline(self, size=None) -> bytes:
        self._go_ahead()
        return self._body.readline(size)

    def readlines(self, size=None) -> list[bytes]:
        self._go_ahead()
        return self._body.readlines(size)

    def __iter__(self):
        self._go_ahead()
        return iter(self._body)

    def __getattr__(self, name: str):  # e.g. ``failed``, which gunicorn's body drain reads
        return getattr(self._body, name)
