"""Prometheus metrics of one app: requests, latency, per-stage latency, predictions, rejections.

``init_app(app)`` creates them and hooks request counting and timing into the app.

Each app registers its metrics in its own ``CollectorRegistry``: tests build many apps in one
process, and the global registry would refuse the second set of names. Under gunicorn,
``PROMETHEUS_MULTIPROC_DIR`` switches prometheus_client to multiprocess mode: every worker
writes its values to files there and a scrape merges them, so whichever worker answers
/metrics reports the totals of all of them.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.mmap_dict import MmapedDict

# Latency buckets around what this service does: ~1 ms for /healthz, a few ms for a small
# PNG, tens of ms for a large photo, up to seconds for a batch of them.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# A stage can take 50 us (a small MLP's forward pass) or a second (a batch of photos).
STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, *LATENCY_BUCKETS)
#: The stages of a prediction, as TorchServe and Triton report them.
STAGES = ("decode", "preprocess", "inference", "explain", "encode")
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def multiprocess_mode() -> bool:
    """Whether prometheus_client writes values to PROMETHEUS_MULTIPROC_DIR.

    It decides once, when it is imported; asking it (rather than reading the environment now)
    keeps exposition consistent with where the values really are.
    """
    return values.ValueClass is not values.MutexValue


class Metrics:
    """The service's metrics, registered in a registry private to one app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        if multiprocess_mode():
            # prometheus_client writes there but does not create it; a missing dir would turn
            # the first request into a 500.
            os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
        self.requests = Counter(
            "digitgrad_http_requests", "HTTP requests answered, by method, route and status.",
            ["method", "route", "status"], registry=self.registry,
        )
        self.latency = Histogram(
            "digitgrad_http_request_duration_seconds",
            "Time from the request reaching Flask to the response leaving it, by route.",
            ["route"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.predictions = Counter(
            "digitgrad_predictions", "Digits predicted (one per image, batches included).",
            ["digit"], registry=self.registry,
        )
        self.rejections = Counter(
            "digitgrad_rejections", "Images or requests refused, by error code.",
            ["reason"], registry=self.registry,
        )
        self.stages = Histogram(
            "digitgrad_stage_duration_seconds",
            "Time in each stage of a prediction (decode: request body to inputs; preprocess: "
            "inputs to 28x28 images; inference: the model; explain: attributions, when asked "
            "for; encode: the response body), by route.",
            ["route", "stage"], buckets=STAGE_BUCKETS, registry=self.registry,
        )
        self._children: dict[tuple, object] = {}

    def observe_request(self, method: str, route: str, status: int, seconds: float | None) -> None:
        """Count one answered request and, when its start is known, its latency."""
        self._child(self.requests, method, route, str(status)).inc()
        if seconds is not None:
            self._child(self.latency, route).observe(seconds)

    def observe_prediction(self, digit: int) -> None:
        """Count one predicted digit."""
        self._child(self.predictions, str(digit)).inc()

    def observe_rejection(self, reason: str) -> None:
        """Count one refused image or request, by its error code."""
        self._child(self.rejections, reason).inc()

    def stage(self, name: str) -> StageTimer:
        """Time a ``with`` block as stage ``name`` of the current request's route (not if it
        raises)."""
        if name not in STAGES:
            raise ValueError(f"Unknown stage {name!r}; expected one of {STAGES}")
        return StageTimer(self._child(self.stages, route_label(), name))

    def _child(self, metric, *labels: str):
        """``metric.labels(*labels)``, remembered: every request observes about seven series,
        and prometheus_client's lookup (lock, label checks) cost more than the observation.
        Label values are bounded (routes, stages, digits, codes), so the cache is too."""
        key = (metric, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children.setdefault(key, metric.labels(*labels))
        return child

    def exposition(self) -> bytes:
        """The Prometheus text format: this app's values, or all workers' in multiprocess mode."""
        if multiprocess_mode():
            return merged_exposition(os.environ["PROMETHEUS_MULTIPROC_DIR"])
        return generate_latest(self.registry)


#: prometheus_client's file types whose values it sums over processes (counters, histograms).
SUMMED_TYPES = ("counter", "histogram", "summary")
#: Where the values of workers that are gone are kept: ``counter_retired.db`` and so on.
RETIRED = "retired"


@contextmanager
def locked(directory: str, operation: int) -> Iterator[None]:
    """Hold ``flock(operation)`` on the metrics directory itself (no extra file in it): scrapes
    share it, ``retire_worker`` holds it alone. Released when the block ends or the process
    dies."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, operation)
        yield
    finally:
        os.close(fd)


def merged_exposition(directory: str) -> bytes:
    """The Prometheus text format of every worker's files in ``directory``, summed.

    A fresh registry per scrape, as prometheus_client documents: the collector reads the files
    at collection time. It lists them, then opens each; without the shared lock a worker
    retired in between turned the scrape into a 503 (its file gone) or counted its values twice
    (in its file and in the retired one), in the scrape right after a model reload."""
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)
    with locked(directory, fcntl.LOCK_SH):
        return generate_latest(registry)


def retire_worker(pid: int, directory: str | None = None) -> None:
    """Fold a dead worker's metric files into the ``retired`` ones, so that the directory
    holds one file per type and live worker instead of one per worker ever started (a model
    reload starts new workers; each scrape reads every file). Totals are unchanged, and no
    scrape sees the move half done: it holds the directory's lock alone. Runs in gunicorn's
    master (child_exit), which alone writes the retired files."""
    directory = directory or os.environ["PROMETHEUS_MULTIPROC_DIR"]
    with locked(directory, fcntl.LOCK_EX):
        multiprocess.mark_process_dead(pid, directory)  # its live gauges, if there were any
        for kind in SUMMED_TYPES:
            dead = os.path.join(directory, f"{kind}_{pid}.db")
            if not os.path.exists(dead):
                continue
            retired = MmapedDict(os.path.join(directory, f"{kind}_{RETIRED}.db"))
            try:
                for key, value, timestamp, _ in MmapedDict.read_all_values_from_file(dead):
                    retired.write_value(key, retired.read_value(key)[0] + value, timestamp)
            finally:
                retired.close()
            os.remove(dead)


class StageTimer:
    """Context manager observing the seconds its block took into one histogram series.

    A class rather than a ``@contextmanager`` generator: four of them run per prediction.
    """

    __slots__ = ("histogram", "started")

    def __init__(self, histogram) -> None:
        self.histogram = histogram
        self.started = 0.0

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is None:
            self.histogram.observe(time.perf_counter() - self.started)


#: The route of a request served outside Flask (server/fastpath.py), else None.
ROUTE: ContextVar[str | None] = ContextVar("digitgrad_route", default=None)


def route_label() -> str:
    """The current request's route template: bounded label values, unlike raw paths."""
    route = ROUTE.get()
    if route is not None:
        return route
    return request.url_rule.rule if request.url_rule is not None else "unmatched"


def init_app(app: Flask) -> Metrics:
    """Create the app's metrics and count every answered request (errors included) with them."""
    metrics = Metrics()

    def start_timer() -> None:
        g.started = time.perf_counter()

    def record_request(response: Response) -> Response:
        started = g.get("started")
        seconds = None if started is None else time.perf_counter() - started
        # Unknown methods would let any client create series without limit, as raw paths would.
        method = request.method if request.method in KNOWN_METHODS else "other"
        metrics.observe_request(method, route_label(), response.status_code, seconds)
        return response

    app.before_request(start_timer)
    app.after_request(record_request)
    return metrics
