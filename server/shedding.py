"""The 503 a busy gunicorn worker gives a prediction from its event loop, without a thread.

An app-level refusal comes too late under overload: a request first waits for one of the
worker's threads and for the GIL, and its refusal still costs a pass through gunicorn and
Flask, so clients that retry at once keep the worker busy refusing. server/worker.py instead
answers here, in its event loop, a request that arrives (a new connection's first or a
keep-alive connection's next) while the worker already has enough in progress: when the bytes
waiting are exactly one complete, simple request (a Content-Length body or none; no chunked
body, no ``Expect``) for a prediction route. Anything else takes the normal path, its bytes
left unread for gunicorn's parser.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

from server import requestlog
from server.errors import error_body
from server.inference import Busy

#: The routes that predict, as raw request paths (the event loop has no router): those of
#: server.api.PREDICTING, which tests/test_shedding.py holds to the app's URL map. Everything
#: else (health, metadata, metrics) is never shed.
PREDICTING = re.compile(rb"^/(?:predict(?:/batch|/number)?|v2/models/[^/?]+"
                        rb"(?:/versions/[^/?]+)?/infer)(?:\?|$)")
_HEADER = re.compile(rb"^([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*(.*?)[ \t]*$")


@dataclass(frozen=True)
class SimpleRequest:
    method: str
    target: str
    keep_alive: bool
    #: The client's X-Request-ID when it is a sane token, else a new one (server/requestlog.py).
    request_id: str


def simple_request(data: bytes) -> SimpleRequest | None:
    """``data`` as exactly one complete HTTP/1.1 prediction request, else None."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return None
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or parts[2] != b"HTTP/1.1" or not PREDICTING.match(parts[1]):
        return None
    length, keep_alive, incoming_id = 0, True, None
    for line in lines[1:]:
        header = _HEADER.match(line)
        if header is None:
            return None
        name, value = header.group(1).lower(), header.group(2)
        if name in (b"transfer-encoding", b"expect"):
            return None
        if name == b"content-length":
            if not value.isdigit():
                return None
            length = int(value)
        elif name == b"connection":
            keep_alive = value.lower() != b"close"
        elif name == b"x-request-id":
            incoming_id = value.decode("latin-1")
    if len(data) != end + 4 + length:  # a body still coming, or a pipelined request
        return None
    return SimpleRequest(parts[0].decode("latin-1"), parts[1].decode("latin-1"), keep_alive,
                         requestlog.request_id(incoming_id))


def overloaded_response(request: SimpleRequest) -> bytes:
    """The 503 the app's own refusal would give: the V2 protocol's error or the envelope."""
    message = str(Busy())
    body = ({"error": message} if request.target.startswith("/v2/")
            else error_body(Busy.code, message))
    payload = json.dumps(body, separators=(",", ":")).encode() + b"\n"
    head = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\nRetry-After: {Busy.retry_after}\r\n"
            f"X-Content-Type-Options: nosniff\r\n{requestlog.HEADER}: {request.request_id}\r\n"
            f"Connection: {'keep-alive' if request.keep_alive else 'close'}\r\n\r\n")
    return head.encode("latin-1") + payload
