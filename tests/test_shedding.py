"""Shedding in the event loop (server/shedding.py, server/worker.py): which requests qualify,
the answer's shape, and a real gunicorn answering a keep-alive client's prediction 503 while
its worker has enough in progress."""

from __future__ import annotations

import json
import re
import socket

import pytest
from drawing import digit_png
from serving import request, running_gunicorn

from server.shedding import overloaded_response, simple_request


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


def read_response(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += conn.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_busy_worker_answers_a_keep_alive_prediction_from_its_event_loop(tiny_model_path,
                                                                            tmp_path):
    png = digit_png()
    # one worker, nothing may wait for the slot: one request in progress makes it busy
    with running_gunicorn(tiny_model_path, tmp_path / "log", tmp_path / "metrics",
                          WEB_CONCURRENCY="1", GUNICORN_THREADS="4", MAX_QUEUED_REQUESTS="0",
                          CLIENT_READ_TIMEOUT="60") as (base, _process):
        host, port = base.removeprefix("http://").split(":")
        client = socket.create_connection((host, int(port)), timeout=30)
        post = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(png)}\r\n\r\n").encode() + png
        client.sendall(post)  # not busy yet: answered by the app
        assert read_response(client).startswith(b"HTTP/1.1 200")
        stalled = [socket.create_connection((host, int(port)), timeout=30) for _ in range(2)]
        for conn in stalled:  # in progress until their bodies come: never
            conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                         b"Content-Length: 1000\r\n\r\n\x89PNG")
        try:
            for _ in range(100):  # until both stalls have reached a thread
                if _busy(client, post):
                    break
            else:
                pytest.fail("the worker never shed")
            client.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")  # never shed
            assert read_response(client).startswith(b"HTTP/1.1 200")
            # counted as a rejection, and logged; not all by Flask (which counts its answers)
            metrics = request(base + "/metrics")[1].decode()
            assert 'digitgrad_rejections_total{reason="overloaded"}' in metrics
            by_flask = re.search(r'route="/predict",status="503"\} (\d+)', metrics)
            logged = [json.loads(line) for line in (tmp_path / "log").read_text().splitlines()
                      if line.startswith("{")]
            shed = [line for line in logged if line["status"] == 503]
            assert shed and {line["route"] for line in shed} == {"/predict"}
            assert len(shed) > (int(by_flask.group(1)) if by_flask else 0)
        finally:
            for conn in stalled:
                conn.close()
            client.close()


def _busy(client: socket.socket, post: bytes) -> bool:
    """Send a prediction on the kept-alive connection: True if it was shed (503)."""
    client.sendall(post)
    answer = read_response(client)
    if answer.startswith(b"HTTP/1.1 503"):
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "overloaded"
        assert b"Retry-After: 1" in answer
        return True
    assert answer.startswith(b"HTTP/1.1 200")
    return False


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
