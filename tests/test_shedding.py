"""Shedding in the event loop (server/shedding.py, server/worker.py): which requests qualify,
the answer's shape, and a real gunicorn answering a keep-alive client's prediction 503 while
its worker has enough in progress."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path

import pytest
from drawing import digit_png
from serving import request, running_gunicorn

from server.shedding import overloaded_response, simple_request
from server.worker import PEEK_BYTES


def raw(start: bytes, body: bytes = b"", **headers: str) -> bytes:
    head = b"".join(f"{k.replace('_', '-')}: {v}\r\n".encode() for k, v in headers.items())
    return start + b"\r\n" + head + b"\r\n" + body


@pytest.mark.parametrize("data", [
    raw(b"POST /predict HTTP/1.1", b"12345", Host="x", Content_Length="5"),
    raw(b"POST /v2/models/digitgrad/infer HTTP/1.1", b"{}", Content_Length="2"),
    raw(b"POST /v2/models/digitgrad/versions/1/infer?x=1 HTTP/1.1", b""),
    raw(b"POST /predict/batch HTTP/1.1", b"", Connection="close"),
])
def test_one_complete_prediction_request_qualifies(data):
    assert simple_request(data) is not None


@pytest.mark.parametrize("data", [
    raw(b"GET /healthz HTTP/1.1"),                                         # not a prediction
    raw(b"POST /v2/models/digitgrad HTTP/1.1"),
    raw(b"POST /predict HTTP/1.1", b"123", Content_Length="5"),           # body still coming
    raw(b"POST /predict HTTP/1.1", b"12345GET / HTTP/1.1\r\n\r\n", Content_Length="5"),
    raw(b"POST /predict HTTP/1.1", b"5\r\nhello\r\n0\r\n\r\n", Transfer_Encoding="chunked"),
    raw(b"POST /predict HTTP/1.1", b"", Expect="100-continue"),
    raw(b"POST /predict HTTP/1.0", b""),
    b"POST /predict HTTP/1.1\r\nHost: x\r\n",                            # headers unfinished
    raw(b"POST /predict HTTP/1.1", b"", Content_Length="-1"),
])
def test_anything_else_takes_the_normal_path(data):
    assert simple_request(data) is None


def test_the_answer_is_the_apps_refusal():
    for target, error in (("/predict", {"code": "overloaded"}), ("/v2/models/m/infer", None)):
        answer = overloaded_response(simple_request(raw(f"POST {target} HTTP/1.1".encode())))
        head, body = answer.split(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 503 ") and b"\r\nRetry-After: 1" in head
        assert b"Connection: keep-alive" in head
        assert f"Content-Length: {len(body)}".encode() in head
        message = json.loads(body)["error"]
        assert message["code"] == "overloaded" if error else "busy" in message
        assert re.search(rb"\r\nX-Request-ID: [0-9a-f]{32}(\r\n|$)", head)  # a new id


def test_the_refusal_echoes_a_sane_request_id_and_replaces_any_other():
    for sent, kept in (("trace-1.2:3", True), ("bad id\x7f", False), ("x" * 200, False)):
        request = simple_request(raw(b"POST /predict HTTP/1.1", X_Request_ID=sent))
        assert (request.request_id == sent) is kept and len(request.request_id) <= 128
        assert f"X-Request-ID: {request.request_id}".encode() in overloaded_response(request)


def read_response(conn: socket.socket) -> bytes:
    """One response from ``conn``, leaving what follows it unread."""
    data = b""
    while b"\r\n\r\n" not in data:
        data += received(conn, 1)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += received(conn, length - len(body))
    return head + b"\r\n\r\n" + body


def received(conn: socket.socket, size: int) -> bytes:
    data = conn.recv(size)
    assert data, "the server closed the connection without an answer"
    return data


@contextmanager
def one_worker(model, tmp_path) -> Iterator[tuple[str, tuple[str, int]]]:
    """One gunicorn worker of 4 threads whose compute slot has no line (MAX_QUEUED_REQUESTS 0):
    one request in progress makes it busy. Yields (base URL, address)."""
    with running_gunicorn(model, tmp_path / "log", tmp_path / "metrics",
                          WEB_CONCURRENCY="1", GUNICORN_THREADS="4", MAX_QUEUED_REQUESTS="0",
                          CLIENT_READ_TIMEOUT="60") as (base, _process):
        host, port = base.removeprefix("http://").split(":")
        yield base, (host, int(port))


@contextmanager
def stalled_uploads(address: tuple[str, int]) -> Iterator[None]:
    """Two prediction requests in progress until their bodies come: never. Neither holds the
    compute slot (a body is read first), so what the worker lets through is still served."""
    stalled = [socket.create_connection(address, timeout=30) for _ in range(2)]
    try:
        for conn in stalled:
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 1000\r\n\r\n\x89PNG")
        yield
    finally:
        for conn in stalled:
            conn.close()


def prediction(body: bytes, connection: str = "keep-alive") -> bytes:
    return (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            f"Connection: {connection}\r\nX-Request-ID: shed-{connection}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def first_request_shed(address: tuple[str, int], post: bytes) -> bytes:
    """A new connection's prediction, again until both stalls have reached a thread and it is
    refused: that 503."""
    for _ in range(100):
        with socket.create_connection(address, timeout=30) as conn:
            conn.sendall(post)
            answer = read_response(conn)
        if answer.startswith(b"HTTP/1.1 503"):
            return answer
        assert answer.startswith(b"HTTP/1.1 200")
    pytest.fail("the worker never shed")


def assert_overloaded(answer: bytes) -> None:
    head, body = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 503") and b"\r\nRetry-After: 1\r\n" in head
    assert b"Content-Type: application/json" in head
    assert json.loads(body)["error"]["code"] == "overloaded"
    assert re.search(rb"\r\nX-Request-ID: shed-[a-z-]+\r\n", head + b"\r\n")  # echoed


def shed_by_the_loop(base: str, log: Path, route: str) -> int:
    """503s in the request log beyond those Flask answered (and counted in its route metric);
    the rejection metric counts both."""
    metrics = request(base + "/metrics")[1].decode()
    assert 'digitgrad_rejections_total{reason="overloaded"}' in metrics
    by_flask = re.search(rf'route="{re.escape(route)}",status="503"\}} (\d+)', metrics)
    logged = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    shed = [line for line in logged if line["status"] == 503]
    assert {line["route"] for line in shed} <= {route}
    by_the_loop = {line["request_id"] for line in shed if line["latency_ms"] == 0.0}
    assert by_the_loop <= {"shed-keep-alive", "shed-close"}  # the client's ids
    return len(shed) - (int(by_flask.group(1)) if by_flask else 0)


def test_a_busy_worker_answers_a_keep_alive_prediction_from_its_event_loop(tiny_model_path,
                                                                            tmp_path):
    post = prediction(digit_png())
    with one_worker(tiny_model_path, tmp_path) as (base, address):
        with socket.create_connection(address, timeout=30) as client:
            # a kept-alive connection; its first answer may be a 503 while the readiness
            # checks' last request is still in progress
            client.sendall(post)
            assert read_response(client)[:12] in (b"HTTP/1.1 200", b"HTTP/1.1 503")
            with stalled_uploads(address):
                for _ in range(100):  # until both stalls have reached a thread
                    client.sendall(post)
                    answer = read_response(client)
                    if answer.startswith(b"HTTP/1.1 503"):
                        break
                    assert answer.startswith(b"HTTP/1.1 200")
                else:
                    pytest.fail("the worker never shed")
                assert_overloaded(answer)
                assert b"Connection: keep-alive" in answer
                client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # never shed
                assert read_response(client).startswith(b"HTTP/1.1 200")
                # logged and counted as a rejection, though Flask never saw it
                assert shed_by_the_loop(base, tmp_path / "log", "/predict") > 0


def test_a_busy_worker_answers_a_new_connections_first_prediction_from_its_event_loop(
        tiny_model_path, tmp_path):
    with one_worker(tiny_model_path, tmp_path) as (base, address), stalled_uploads(address):
        answer = first_request_shed(address, prediction(digit_png()))
        assert_overloaded(answer)
        with socket.create_connection(address, timeout=30) as conn:
            conn.sendall(prediction(digit_png(), connection="close"))
            answer = read_response(conn)
            assert_overloaded(answer)
            assert b"Connection: close" in answer and conn.recv(65536) == b""  # closed
        assert shed_by_the_loop(base, tmp_path / "log", "/predict") >= 2


def test_a_busy_worker_serves_what_is_not_one_simple_prediction(tiny_model_path, tmp_path):
    png = digit_png()
    large = digit_png(400, fmt="BMP")  # more than the event loop looks at
    assert len(large) > PEEK_BYTES
    chunked = (b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n"
               + f"{len(png):x}\r\n".encode() + png + b"\r\n0\r\n\r\n")
    with one_worker(tiny_model_path, tmp_path) as (_base, address), stalled_uploads(address):
        first_request_shed(address, prediction(png))  # now busy
        for data in (chunked, prediction(large), b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
                     prediction(png) * 2):  # a client that pipelines
            with socket.create_connection(address, timeout=30) as conn:
                conn.sendall(data)
                for _ in range(data.count(b" HTTP/1.1\r\n")):
                    answer = read_response(conn)
                    assert answer.startswith(b"HTTP/1.1 200"), (data[:40], answer[:200])


def test_a_pipelining_client_gets_every_answer_in_order(tiny_model_path, tmp_path):
    png = digit_png()
    with one_worker(tiny_model_path, tmp_path) as (_base, address):
        with socket.create_connection(address, timeout=30) as conn:
            conn.sendall(prediction(png) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                         + prediction(png))
            answers = [read_response(conn) for _ in range(3)]
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers)
    assert [b"\"digit\"" in answer for answer in answers] == [True, False, True]


def test_compute_slots_go_to_the_threads_in_the_order_they_asked():
    import threading
    import time

    from server.inference import ComputeSlots

    slots, order = ComputeSlots(1, max_waiting=5), []

    def work(i: int) -> None:
        with slots:
            order.append(i)

    with slots:
        threads = []
        for i in range(5):
            threads.append(threading.Thread(target=work, args=(i,)))
            threads[-1].start()
            while len(slots._waiting) < i + 1:  # in line before the next one starts
                time.sleep(0.001)
    for thread in threads:
        thread.join(timeout=30)
    assert order == [0, 1, 2, 3, 4]
    with slots:  # free again, taken at once
        pass


def test_the_event_loop_knows_the_same_prediction_routes_as_the_app(app):
    from server.api import PREDICTING
    from server.shedding import PREDICTING as PREDICTING_PATHS

    for rule in app.url_map.iter_rules():
        path = re.sub(r"<[^>]+>", "x", rule.rule).encode()
        predicting = "POST" in rule.methods and rule.endpoint in PREDICTING
        assert bool(PREDICTING_PATHS.match(path)) == predicting, rule.rule
    assert {rule.endpoint for rule in app.url_map.iter_rules()} >= PREDICTING


def loopback_pairs(count: int, receive_buffer: int | None = None
                   ) -> list[tuple[socket.socket, socket.socket]]:
    """``count`` connected TCP pairs on loopback: (the server's end, the client's end), the
    client's receive buffer ``receive_buffer`` bytes if given."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        pairs = []
        for _ in range(count):
            client = socket.socket()
            if receive_buffer:
                client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
            client.settimeout(30)
            client.connect(listener.getsockname())
            pairs.append((listener.accept()[0], client))
    return pairs


@contextmanager
def hand_driven_worker(app) -> Iterator:
    """A BalancedThreadWorker outside gunicorn, serving ``app``, with a poller and no thread
    pool (a thread would be an AttributeError)."""
    import selectors

    from gunicorn.config import Config
    from gunicorn.glogging import Logger

    from server.worker import BalancedThreadWorker

    cfg = Config()
    worker = BalancedThreadWorker(1, 0, [], None, 30, cfg, Logger(cfg))
    worker.wsgi = app  # what init_process would load
    worker.poller, worker.tpool = selectors.DefaultSelector(), None
    try:
        yield worker
    finally:
        worker.tmp.close()


def in_line(worker, pairs, post: bytes, waited: float) -> None:
    """Each client sends ``post``; its connection joins the worker's line, ``waited`` ago."""
    from gunicorn.workers.gthread import TConn

    for server_end, client in pairs:
        client.sendall(post)
        worker._line.append((TConn(worker.cfg, server_end, client.getsockname(),
                                   ("127.0.0.1", 0)), time.monotonic() - waited))
        worker.nr_conns += 1


def test_a_line_longer_than_the_bound_sheds_those_that_waited_and_serves_the_rest(make_app):
    """Four predictions have waited a second, over MAX_QUEUE_WAIT_MS; the worker's bound is
    two (the compute slot and one in its line), so the first two (each with two or more behind
    it) are answered 503 and the last two are served by the event loop itself."""
    pairs = loopback_pairs(4)
    try:
        with hand_driven_worker(make_app(MAX_QUEUED_REQUESTS=1)) as worker:
            in_line(worker, pairs, prediction(digit_png()), waited=1.0)
            while worker._line:
                worker._serve_line()
            answers = [read_response(client) for _server_end, client in pairs]
            assert_overloaded(answers[0])
            assert_overloaded(answers[1])
            assert [answer[:12] for answer in answers[2:]] == [b"HTTP/1.1 200"] * 2
            assert b'"digit"' in answers[3]
            # every connection kept alive, back in the poller for its next request
            assert len(worker.keepalived_conns) == 4 == len(worker.poller.get_map())
            assert worker.in_flight == 0 and worker.nr_conns == 4
    finally:
        for server_end, client in pairs:
            server_end.close()
            client.close()


class Threads:
    """A thread pool that records what it is given instead of running it."""

    def __init__(self):
        self.submitted = []

    def submit(self, handle, conn):
        self.submitted.append(conn)
        return Future()


V2_ATTRIBUTIONS = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32",
                                          "shape": [1, 28, 28], "data": [0.0] * 784}],
                              "outputs": [{"name": "attributions"}]}).encode()


@pytest.mark.parametrize("post", [
    prediction(digit_png()).replace(b"POST /predict ", b"POST /predict?explain=1 "),
    (f"POST /v2/models/digitgrad/infer HTTP/1.1\r\nHost: x\r\n"
     f"Content-Length: {len(V2_ATTRIBUTIONS)}\r\n\r\n").encode() + V2_ATTRIBUTIONS,
], ids=["predict-explain", "v2-attributions"])
def test_an_explanation_is_served_by_a_thread_not_the_event_loop(app, post):
    """An explanation costs several times a prediction: the loop leaves it to a thread."""
    pairs = loopback_pairs(1)
    try:
        with hand_driven_worker(app) as worker:
            worker.tpool = threads = Threads()
            in_line(worker, pairs, post, waited=0.0)
            worker._serve_line()
            assert len(threads.submitted) == 1 and worker.in_flight == 1
    finally:
        for server_end, client in pairs:
            server_end.close()
            client.close()


def test_a_client_that_has_not_taken_its_answers_is_served_by_a_thread(app):
    """The event loop serves a prediction itself only while the connection's send queue is
    empty: a client that does not read would otherwise block the loop, and everyone with it,
    for up to CLIENT_READ_TIMEOUT once our send buffer is full."""
    [(server_end, client)] = pairs = loopback_pairs(1, receive_buffer=4096)
    try:
        server_end.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:  # answers the client has not read, more than its window holds
                server_end.send(bytes(65536))
        with hand_driven_worker(app) as worker:
            worker.tpool = threads = Threads()
            in_line(worker, pairs, prediction(digit_png()), waited=0.0)
            worker._serve_line()
            assert len(threads.submitted) == 1 and worker.in_flight == 1
            assert not worker._line
    finally:
        server_end.close()
        client.close()
