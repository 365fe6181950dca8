"""Slow clients against a real gunicorn with the repo's config, over real loopback sockets.

Stalled uploads (headers and 4 bytes of a 100 kB body, then silence) must neither starve other
clients nor be held forever, and an upload that is slow but keeps moving must still succeed.
The asserts are about order and outcome, not speed: /healthz and /predict are answered while
every stalled upload is still open (so they did not wait for the stalls to be dropped), and
each stall then gets a 408 and a closed connection. Deadlines only stop a hung test.
"""

from __future__ import annotations

import io
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from drawing import digit_png
from PIL import Image
from serving import request, running_gunicorn

STALLED = 32
READ_TIMEOUT = 4  # CLIENT_READ_TIMEOUT for the server: well above a /healthz answer's time
HANG = 60  # seconds after which a socket read means the server is stuck: the test fails


@pytest.fixture
def server(tiny_model_path, tmp_path):
    """gunicorn with the config's own thread count, 2 workers; yields (host, port)."""
    # GUNICORN_THREADS unset: the production default is what is under test
    with running_gunicorn(tiny_model_path, tmp_path / "gunicorn.log", GUNICORN_THREADS=None,
                          CLIENT_READ_TIMEOUT=str(READ_TIMEOUT)) as (base, _process):
        host, port = base.removeprefix("http://").split(":")
        yield host, int(port)


def stalled_upload(host: str, port: int) -> socket.socket:
    """A POST /predict that announces 100000 bytes of body, sends 4, and stops."""
    conn = socket.create_connection((host, port), timeout=HANG)
    conn.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                 "Content-Length: 100000\r\n\r\n".encode() + b"\x89PNG")
    return conn


def nothing_received(conn: socket.socket) -> bool:
    """True while the server has neither answered nor closed this connection."""
    conn.setblocking(False)
    try:
        conn.recv(1)
    except BlockingIOError:
        return True
    finally:
        conn.settimeout(HANG)
    return False


def read_to_close(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    return data


def big_photo() -> bytes:
    """A 2400x1800 noisy JPEG of about 1.5 MB: a phone photo's size, drawn digit on paper."""
    rng = np.random.default_rng(0)
    paper = rng.integers(170, 230, (1800, 2400), dtype=np.uint8)
    paper[500:1300, 1100:1300] = 30  # a thick "1"
    out = io.BytesIO()
    Image.fromarray(paper).convert("RGB").save(out, format="JPEG", quality=90)
    return out.getvalue()


def slow_upload(host: str, port: int, body: bytes, pieces: int, pause: float) -> bytes:
    """POST /predict sending ``body`` in ``pieces`` with ``pause`` seconds between them."""
    with socket.create_connection((host, port), timeout=HANG) as conn:
        conn.sendall(f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/jpeg\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
        step = -(-len(body) // pieces)
        for start in range(0, len(body), step):
            conn.sendall(body[start:start + step])
            time.sleep(pause)
        return read_to_close(conn)


def test_stalled_uploads_neither_starve_others_nor_stay_open(server):
    host, port = server
    base = f"http://{host}:{port}"
    stalled = [stalled_upload(host, port) for _ in range(STALLED)]
    try:
        time.sleep(0.5)  # every stalled request has reached a worker thread by now
        status, body = request(base + "/healthz")
        assert status == 200 and json.loads(body) == {"status": "ok"}
        status, body = request(base + "/predict", digit_png(), {"Content-Type": "image/png"})
        assert status == 200 and "digit" in json.loads(body)
        # Both were answered while all the stalls were still held: they did not wait for the
        # stalled uploads to be dropped.
        assert all(nothing_received(conn) for conn in stalled)

        # A photo sent in pieces over longer than the read deadline still succeeds (the
        # deadline is per read, not per request), while the stalls are being dropped.
        photo = big_photo()
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(slow_upload, host, port, photo, pieces=12,
                               pause=1.5 * READ_TIMEOUT / 12)
            replies = [read_to_close(conn) for conn in stalled]
            reply = slow.result(timeout=HANG)
    finally:
        for conn in stalled:
            conn.close()
    for answer in replies:  # 408 in the JSON envelope, then the connection is closed
        assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
    assert "digit" in json.loads(reply.split(b"\r\n\r\n", 1)[1])
