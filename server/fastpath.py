"""The V2 infer route's common case, served without werkzeug's request and response objects
and without Flask's dispatch.

Of the CPU a one-image V2 request costs the server, werkzeug (environ to request object,
response object, headers) and Flask (contexts, routing, hooks) took a large share (measured
in docs/benchmarks.md, "where a request's CPU goes"). ``FastInfer``, a WSGI middleware in
front of Flask, answers ``POST /v2/models/<name>[/versions/<version>]/infer`` with a
Content-Length body of at most FAST_BYTES with the route's own code
(``server.v2.answer_infer``) in the app's context, and gives it what the Flask route's hooks
give it: the request's metrics, its log line, its ``X-Request-ID`` and
``X-Content-Type-Options`` headers.

Only answers are served here. A request the route would refuse (a V2 error, a busy worker, a
body over its limit, anything raised) goes to Flask, its body given back, and is answered
there: there is one way to refuse, and the Flask route stays the reference. Every other
request goes to Flask untouched. tests/test_fastpath.py holds the answers here, byte for byte,
to the Flask route's.
"""

from __future__ import annotations

import io
import re
import time
from collections.abc import Callable, Iterable

from flask import Flask

from server import requestlog
from server.api import NOSNIFF
from server.metrics import ROUTE
from server.state import get_serving
from server.v2 import HEADER_LENGTH, answer_infer

#: Bodies at most this large are served here: a refused one is parsed again by Flask, so the
#: repeat stays small. Larger ones (batches) cost their compute, not their framework.
FAST_BYTES = 64 * 1024
#: The infer route's paths, and their rules in the app's URL map (for metrics and the log).
PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?/infer")
RULES = ("/v2/models/<name>/infer", "/v2/models/<name>/versions/<version>/infer")
#: The environ's key of the binary extension's header.
HEADER_LENGTH_KEY = "HTTP_" + HEADER_LENGTH.upper().replace("-", "_")


class DeclineError(Exception):
    """The request is Flask's to answer."""


class FastInfer:
    """WSGI: V2 inference answered here, everything else by ``wsgi_app`` (Flask's)."""

    def __init__(self, app: Flask, wsgi_app: Callable):
        self.app = app
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        match = (PATH.fullmatch(environ.get("PATH_INFO", ""))
                 if environ.get("REQUEST_METHOD") == "POST" else None)
        length = _content_length(environ) if match else None
        if length is None or not 0 <= length <= FAST_BYTES:
            return self.wsgi_app(environ, start_response)
        started = time.perf_counter()
        received: list[bytes] = []  # the body once read, to give back with the request

        def read_body(max_bytes: int) -> bytes:
            # Read only here, once the route's checks have passed, as Flask's route does: a
            # request for an unknown model is refused before its body is asked for.
            if length > max_bytes:
                raise DeclineError()  # Flask's 413, the body unread
            received.append(environ["wsgi.input"].read(length))
            if len(received[0]) != length:
                raise DeclineError()  # werkzeug's 400 for a body cut short
            return received[0]

        name, version = match.groups()
        route = RULES[version is not None]
        token = ROUTE.set(route)
        try:
            with self.app.app_context():
                headers, body = self._answer(environ, name, version, read_body, route,
                                             started)
        except Exception:  # refused (or failed): answered by Flask, the one place that refuses
            # (a refusal after decoding, as a Busy from the compute slot, has its decode
            # stage timed once here and once there: rare, and only the stage histograms)
            headers = None
        finally:
            ROUTE.reset(token)
        if headers is None:
            if received:
                environ["wsgi.input"] = io.BytesIO(received[0])
            return self.wsgi_app(environ, start_response)
        start_response("200 OK", headers)
        return [body]

    @staticmethod
    def _answer(environ: dict, name: str, version: str | None,
                read_body: Callable[[int], bytes], route: str,
                started: float) -> tuple[list[tuple[str, str]], bytes]:
        """The answer's headers and body, as the Flask route and its hooks give them."""
        serving = get_serving()
        if serving.inference.slots.full():  # server.api.shed_early's 503, from Flask
            raise DeclineError()
        answer = answer_infer(name, version, read_body, environ.get(HEADER_LENGTH_KEY))
        headers = [("Content-Type", answer.content_type),
                   ("Content-Length", str(len(answer.body)))]
        if answer.header_length is not None:
            headers.append((HEADER_LENGTH, answer.header_length))
        request_id = requestlog.request_id(environ.get("HTTP_X_REQUEST_ID"))
        headers += [NOSNIFF, (requestlog.HEADER, request_id)]
        requestlog.log_request(request_id, "POST", route, 200, started,
                               serving.model.model_id)
        serving.metrics.observe_request("POST", route, 200, time.perf_counter() - started)
        return headers, answer.body


def _content_length(environ: dict) -> int | None:
    """The request's Content-Length, None when it has none or it is not a number."""
    try:
        return int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
