"""Request ids and one JSON log line per request.

``init_app(app)`` gives every request an id: the client's ``X-Request-ID`` when it is a sane
token (a proxy's or a caller's, so their logs and ours share it), else a new one. The id is
echoed in the response's ``X-Request-ID`` and logged, with the route, status, latency and model
id, as one JSON object per line on stdout, where containers collect it::

    {"time": "2026-01-31T12:00:00.123Z", "request_id": "4bf9...", "method": "POST",
     "route": "/predict", "status": 200, "latency_ms": 4.1, "model": "2641ed5140b6",
     "pid": 12, "digit": 7, "confidence": 0.9931}

A request that predicted adds ``digit`` and ``confidence`` (``digits`` and ``confidences``
when it predicted several: batches, numbers, V2). Never the image, headers or query: they may
carry what users did not mean to leave in a log.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import uuid
from collections.abc import Iterable
from datetime import datetime, timezone

from flask import Flask, Response, g, request

from server.inference import Prediction
from server.metrics import route_label
from server.state import get_serving

HEADER = "X-Request-ID"
#: Ids we keep: what proxies and tracing libraries send (UUIDs, hex trace ids, dotted or
#: dashed tokens), bounded so that a client cannot fill the log with one header.
VALID_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:+=/-]{0,127}")

log = logging.getLogger("digitgrad.requests")


class _StdoutHandler(logging.Handler):
    """Writes each record's message as one line to the current ``sys.stdout`` (looked up per
    record, so a replaced stdout, as under pytest's capture, is honoured)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stdout.write(record.getMessage() + "\n")
            sys.stdout.flush()
        except Exception:
            self.handleError(record)


def record_predictions(results: Iterable) -> None:
    """Add the predicted digits and their confidences to the current request's log line
    (a batch's refused files, not Predictions, are left out)."""
    g.setdefault("predictions", []).extend(
        (p.digit, p.confidence) for p in results if isinstance(p, Prediction))


def request_id(incoming: str | None) -> str:
    """The client's id when it is a sane token, else a new one."""
    return incoming if incoming and VALID_ID.fullmatch(incoming) else uuid.uuid4().hex


def _start() -> None:
    g.request_started = time.perf_counter()
    g.request_id = request_id(request.headers.get(HEADER))


def _finish(response: Response) -> Response:
    if "request_id" not in g:  # a before_request hook ahead of _start answered the request
        g.request_id = uuid.uuid4().hex
    response.headers[HEADER] = g.request_id
    log_request(g.request_id, request.method, route_label(), response.status_code,
                g.get("request_started"), get_serving().model.model_id)
    return response


def log_request(request_id: str, method: str, route: str, status: int, started: float | None,
                model: str) -> None:
    """The line of an answered request that started at ``started`` (perf_counter), with the
    predictions recorded in ``g`` (the app's context) while it was served."""
    line = _line(request_id, method, route, status,
                 None if started is None else round((time.perf_counter() - started) * 1000, 2),
                 model)
    predictions = g.get("predictions", [])
    if len(predictions) == 1:
        line["digit"], line["confidence"] = predictions[0][0], round(predictions[0][1], 4)
    elif predictions:
        line["digits"] = [digit for digit, _ in predictions]
        line["confidences"] = [round(confidence, 4) for _, confidence in predictions]
    log.info(json.dumps(line))


def log_unrouted(request_id: str, method: str, route: str, status: int, model: str) -> None:
    """The line of a request answered before it reached the app (server/worker.py's 503s
    under overload)."""
    log.info(json.dumps(_line(request_id, method, route, status, 0.0, model)))


def _line(request_id: str, method: str, route: str, status: int, latency_ms: float | None,
          model: str) -> dict:
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="milliseconds")[:-6] + "Z",
        "request_id": request_id,
        "method": method,
        "route": route,
        "status": status,
        "latency_ms": latency_ms,
        "model": model,
        "pid": os.getpid(),
    }


def init_app(app: Flask) -> None:
    """Give ``app``'s requests ids and log each as one JSON line on stdout."""
    if not log.handlers:
        log.addHandler(_StdoutHandler())
        log.setLevel(logging.INFO)
        # Ours alone: a root handler (a test's, an embedding app's) would print it twice.
        log.propagate = False
    app.before_request(_start)
    app.after_request(_finish)
