"""HTTP/1.1 at the socket: malformed framing, gunicorn's own error answers, Expect and pipelining,
against a real gunicorn with the repo's config.

Every answer, whoever gives it (the app or gunicorn's parser), is JSON in the service's
envelope (the V2 routes: the protocol's ``{"error": ...}``), never a 500, and never quotes what
the client sent.
"""

from __future__ import annotations

import json
import socket

import pytest
from drawing import digit_png
from serving import running_gunicorn

from server import create_app
from server.gunicorn_hooks import PAGES

MAX_UPLOAD_BYTES = 20_000
#: Sent inside every malformed request: it must never come back.
MARKER = "zq7marker"


@pytest.fixture(scope="module")
def server(shared_tiny_model_path, tmp_path_factory):
    """(host, port, log path) of a 2-worker gunicorn serving the tiny model."""
    log = tmp_path_factory.mktemp("protocol") / "gunicorn.log"
    with running_gunicorn(shared_tiny_model_path, log,
                          MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES)) as (base, _):
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port), log


def post_routes(model_path) -> list[str]:
    """Every POST route of the OpenAPI description, path parameters filled in."""
    app = create_app({"MODEL_PATH": str(model_path)})
    document = app.test_client().get("/openapi.json").get_json()
    version = app.test_client().get("/model").get_json()["id"]
    routes = []
    for path, operations in document["paths"].items():
        if "post" in operations:
            names = ["digitgrad", "digitgrad-image"] if "{name}" in path else [None]
            for name in names:
                routes.append(path.replace("{name}", name or "").replace("{version}", version))
    return routes


def exchange(server, raw: bytes) -> bytes:
    """Send ``raw`` on a new connection; everything received until the server closes it."""
    host, port, _ = server
    with socket.create_connection((host, port), timeout=20) as conn:
        conn.sendall(raw)
        received = b""
        while chunk := conn.recv(65536):
            received += chunk
    return received


def responses(data: bytes) -> list[tuple[int, dict, bytes]]:
    """The (status, headers, body) of each HTTP/1.1 response in ``data``, in order."""
    found = []
    while data:
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        fields = (line.partition(":") for line in lines[1:])
        headers = {name.strip().lower(): value.strip() for name, _, value in fields}
        length = int(headers.get("content-length", 0))
        found.append((status, headers, rest[:length]))
        data = rest[length:]
    return found


def only_response(data: bytes) -> tuple[int, dict, bytes]:
    (answer,) = responses(data)
    return answer


def assert_envelope(answer, status: int, v2: bool = False) -> dict | str:
    """The answer has ``status``, is JSON in the right envelope, quotes nothing it was sent."""
    got, headers, body = answer
    assert got == status, body[:300]
    assert headers["content-type"].startswith("application/json"), headers
    assert MARKER.encode() not in body and b"Traceback" not in body
    error = json.loads(body)["error"]
    if v2:
        assert isinstance(error, str)
    else:
        assert set(error) == {"code", "message"}
    return error


def chunked_post(path: str, content_type: str, chunks: bytes) -> bytes:
    return (f"POST {path}?{MARKER} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\n"
            "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n").encode() + chunks


BAD_FRAMING = {
    "chunk_size": b"zz" + MARKER.encode() + b"\r\nhello\r\n0\r\n\r\n",
    "terminator": b"5\r\nhello" + MARKER.encode() + b"0\r\n\r\n",
    "extension": b"5;" + MARKER.encode() + b"\x01\r\nhello\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("framing", sorted(BAD_FRAMING))
def test_bad_chunked_framing_is_a_400_on_every_post_route(server, shared_tiny_model_path,
                                                          framing):
    for route in post_routes(shared_tiny_model_path):
        content_type = ("application/json" if route.startswith("/v2") else
                        "image/png" if route != "/predict/batch" else
                        "multipart/form-data; boundary=b")
        answer = only_response(exchange(server, chunked_post(route, content_type,
                                                             BAD_FRAMING[framing])))
        error = assert_envelope(answer, 400, v2=route.startswith("/v2"))
        if not route.startswith("/v2"):
            assert error["code"] == "bad_request", (route, error)
    assert "Traceback" not in server[2].read_text()


GUNICORN_ERRORS = {
    # gunicorn parses these itself and answers before the app sees the request
    "request_line": (400, f"GET /{MARKER} NOT-HTTP\r\n\r\n".encode()),
    "method": (400, f"G{MARKER}(T / HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    "header": (400, f"GET / HTTP/1.1\r\nHost: x\r\nBad{MARKER} Name: 1\r\n\r\n".encode()),
    "long_line": (414, f"GET /{MARKER}{'a' * 5000} HTTP/1.1\r\nHost: x\r\n\r\n".encode()),
    "many_headers": (431, ("GET / HTTP/1.1\r\nHost: x\r\n" + "".join(
        f"X-{MARKER}-{i}: 1\r\n" for i in range(120)) + "\r\n").encode()),
    "expect": (417, f"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: {MARKER}\r\n"
                    "Content-Length: 3\r\n\r\nabc".encode()),
    "transfer_coding": (501, f"POST /{MARKER} HTTP/1.1\r\nHost: x\r\n"
                             "Transfer-Encoding: br, chunked\r\n\r\n0\r\n\r\n".encode()),
}


@pytest.mark.parametrize("case", sorted(GUNICORN_ERRORS))
def test_gunicorns_own_answers_are_json_and_quote_nothing(server, case):
    status, raw = GUNICORN_ERRORS[case]
    answer = only_response(exchange(server, raw))
    error = assert_envelope(answer, status)
    assert (error["code"], error["message"]) == PAGES[status]
    assert answer[1]["connection"] == "close"


def expect_continue(server, content_length: int, body: bytes) -> tuple[bytes, bytes]:
    """(what came before the body was sent, what came after) for an Expect: 100-continue POST."""
    host, port, _ = server
    with socket.create_connection((host, port), timeout=20) as conn:
        conn.sendall(f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                     f"Content-Length: {content_length}\r\nExpect: 100-continue\r\n"
                     "Connection: close\r\n\r\n".encode())
        first = conn.recv(65536)
        after = b""
        try:
            conn.sendall(body)
            while chunk := conn.recv(65536):
                after += chunk
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused: the server closed the connection, as it should
    return first, after


def test_expect_continue_comes_after_the_size_check(server):
    # too large: the final 413 at once, no "100 Continue", and the body is never wanted
    first, after = expect_continue(server, 10 * MAX_UPLOAD_BYTES, b"x" * 100)
    assert not first.startswith(b"HTTP/1.1 100"), first[:100]
    error = assert_envelope(only_response(first + after), 413)
    assert error["code"] == "request_too_large"
    # within the limit: "100 Continue", then the answer to the body
    png = digit_png()
    first, after = expect_continue(server, len(png), png)
    assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
    status, _, body = only_response(after)
    assert status == 200 and "digit" in json.loads(body)


def test_pipelined_requests_are_answered_in_order(server):
    png = digit_png()
    raw = (b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
           + f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
             f"Content-Length: {len(png)}\r\n\r\n".encode() + png
           + b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
           + b"GET /readyz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    answers = responses(exchange(server, raw))
    assert [status for status, _, _ in answers] == [200, 200, 404, 200]
    assert "digit" in json.loads(answers[1][2]) and json.loads(answers[3][2])["status"] == "ready"
