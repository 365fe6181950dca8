"""Request bodies: uploads stay in memory (no temporary files), the bytes a worker holds at once
are bounded, and the server's own storage or memory trouble is a 503, never a 500."""

from __future__ import annotations

import errno
import io
import tempfile
import threading

import pytest
from drawing import digit_png
from serving import multipart
from werkzeug.test import EnvironBuilder

from server.bodies import BodiesOverBudget, BodyBudget, CountedBody, InMemoryRequest


def padded_png(size: int) -> bytes:
    """A digit PNG of ``size`` bytes: the image, then padding after its end (still decodable)."""
    png = digit_png()
    return png + bytes(size - len(png))


@pytest.fixture
def no_temporary_files(monkeypatch):
    """Any temporary file is a full disk: what a 64 MiB /tmp gave a full batch."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(tempfile, "TemporaryFile", full)
    monkeypatch.setattr(tempfile, "NamedTemporaryFile", full)
    monkeypatch.setattr(tempfile, "mkstemp", full)


def test_a_full_batch_of_large_files_never_touches_the_disk(client, no_temporary_files):
    files = [padded_png(600_000)] * 16  # each past werkzeug's 500 kB spooling threshold
    body, content_type = multipart("images", files)
    response = client.post("/predict/batch", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_json()
    assert len(response.get_json()["predictions"]) == 16
    body, content_type = multipart("image", files[:1])
    response = client.post("/predict", data=body, content_type=content_type)
    assert response.status_code == 200, response.get_json()


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   MemoryError()])
@pytest.mark.parametrize("route", ["/predict", "/v2/models/digitgrad-image/infer"])
def test_the_servers_own_trouble_reading_a_body_is_a_503(client, monkeypatch, error, route):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(InMemoryRequest, "_get_file_stream", fail)
    monkeypatch.setattr(InMemoryRequest, "get_data", fail)
    body, content_type = multipart("image", [digit_png()])
    response = client.post(route, data=body, content_type=content_type)
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    error_body = response.get_json()["error"]
    if route.startswith("/v2"):
        assert "short of memory or storage" in error_body
    else:
        assert error_body["code"] == "unavailable"


class SlowBody:
    """A WSGI input that sends ``first`` bytes, then waits for ``go`` before the rest."""

    def __init__(self, data: bytes, first: int):
        self.data, self.first = data, first
        self.position = 0
        self.started, self.go = threading.Event(), threading.Event()

    def tell(self) -> int:  # werkzeug's EnvironBuilder measures the stream with these
        return self.position

    def seek(self, position: int, whence: int = 0) -> int:
        self.position = position if whence == 0 else len(self.data)
        return self.position

    def read(self, size: int = -1) -> bytes:
        if self.position >= self.first:
            self.started.set()
            assert self.go.wait(timeout=30)
        end = len(self.data) if size < 0 else self.position + size
        if self.position < self.first:
            end = min(end, self.first)
        chunk = self.data[self.position:end]
        self.position += len(chunk)
        return chunk


def test_bodies_held_at_once_are_bounded_per_worker(make_app):
    png = padded_png(30_000)
    client = make_app(MAX_BODY_BYTES_PER_WORKER=50_000).test_client()
    # one request is receiving its 30 kB body (25 kB have come)...
    slow = SlowBody(png, 25_000)
    environ = EnvironBuilder(path="/predict", method="POST", content_type="image/png",
                             input_stream=slow, content_length=len(png)).get_environ()
    answers = []
    thread = threading.Thread(target=lambda: answers.append(client.open(environ)))
    thread.start()
    assert slow.started.wait(timeout=30)
    # ...so another 30 kB would take the worker past 50 kB: refused at once, before a byte of
    # its body is read, and nothing waits
    busy = client.post("/predict", data=png, content_type="image/png")
    assert busy.status_code == 503 and busy.headers["Retry-After"] == "1"
    assert busy.get_json()["error"]["code"] == "server_busy"
    v2 = client.post("/v2/models/digitgrad-image/infer", data=bytes(30_000),
                     content_type="application/json")
    assert v2.status_code == 503 and "too many request bodies" in v2.get_json()["error"]
    # the first one completes, and its bytes are given back: the next one fits
    slow.go.set()
    thread.join(timeout=30)
    assert answers[0].status_code == 200
    assert client.post("/predict", data=png, content_type="image/png").status_code == 200
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'digitgrad_rejections_total{reason="server_busy"} 2.0' in metrics


def test_a_known_length_is_taken_before_reading_a_chunked_body_as_it_arrives():
    budget = BodyBudget(100)
    stream = io.BytesIO(bytes(150))
    with pytest.raises(BodiesOverBudget):  # 150 declared: refused before a byte is read
        CountedBody(stream, budget, declared=150).read(10)
    assert stream.tell() == 0 and budget.held == 0
    known = CountedBody(io.BytesIO(bytes(60)), budget, declared=60)
    assert len(known.read(10)) == 10 and budget.held == 60  # all 60 at the first read
    known.read()
    assert budget.held == 60
    chunked = CountedBody(io.BytesIO(bytes(150)), budget, declared=None)
    chunked.read(30)
    assert budget.held == 90  # as it arrives
    with pytest.raises(BodiesOverBudget):
        chunked.read(30)
    budget.give_back(known.count + chunked.count)
    assert budget.held == 0


def test_the_default_budget_holds_the_largest_body_and_four_uploads(make_app):
    batch = make_app(MAX_UPLOAD_BYTES=100_000, MAX_BATCH_FILES=3, MAX_TENSOR_IMAGES=1)
    assert batch.config["MAX_BODY_BYTES_PER_WORKER"] == 7 * 100_000 + 2 * 64 * 1024
    pixels = make_app(MAX_UPLOAD_BYTES=1000, MAX_BATCH_FILES=3, MAX_TENSOR_IMAGES=10)
    json_bytes = 10 * 28 * 28 * 24  # v2.IMAGE_JSON_BYTES a pixels image as JSON
    assert pixels.config["MAX_BODY_BYTES_PER_WORKER"] == json_bytes + 4 * 1000 + 2 * 64 * 1024
