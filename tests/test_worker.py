"""server/worker.py under a real gunicorn: a burst of keep-alive connections spreads over the
workers instead of landing on whichever accepted first."""

from __future__ import annotations

import json
import logging
import socket
from collections import Counter

from serving import request, running_gunicorn

CONNECTIONS = 16


def served_by(log, route: str) -> Counter:
    """How many requests of ``route`` each worker answered, from the JSON request log."""
    lines = (json.loads(line) for line in log.read_text().splitlines() if line.startswith("{"))
    return Counter(line["pid"] for line in lines if line["route"] == route)


def test_a_burst_of_keep_alive_connections_is_shared_by_both_workers(tiny_model_path, tmp_path):
    log = tmp_path / "gunicorn.log"
    with running_gunicorn(tiny_model_path, log, GUNICORN_THREADS=None) as (base, _process):
        host, port = base.removeprefix("http://").split(":")
        # both workers in their event loops (and so on the board): each has answered
        for _ in range(500):
            if len(served_by(log, "/readyz")) == 2:
                break
            request(base + "/readyz")
        assert len(served_by(log, "/readyz")) == 2
        # Opened all at once, as a client pool does; each then keeps its connection.
        connections = [socket.create_connection((host, int(port)), timeout=30)
                       for _ in range(CONNECTIONS)]
        try:
            for conn in connections:
                conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
            for conn in connections:
                assert conn.recv(65536).startswith(b"HTTP/1.1 200")
        finally:
            for conn in connections:
                conn.close()
        # The request log names the pid of the worker that answered; a line is written just
        # after its answer is sent.
        for _ in range(500):
            served = served_by(log, "/healthz")
            if sum(served.values()) == CONNECTIONS:
                break
            request(base + "/readyz")
    assert sum(served.values()) == CONNECTIONS
    assert len(served) == 2 and max(served.values()) <= CONNECTIONS // 2 + 2, served


def make_worker():
    from gunicorn.config import Config

    from server.worker import BalancedThreadWorker

    return BalancedThreadWorker(1, 0, [], None, 30, Config(), logging.getLogger("gunicorn.error"))


def test_a_gunicorn_without_the_gthread_internals_it_uses_gets_plain_gthread(monkeypatch,
                                                                             caplog):
    from gunicorn.workers import gthread

    worker = make_worker()
    try:
        assert type(worker).__name__ == "BalancedThreadWorker"
    finally:
        worker.tmp.close()
    monkeypatch.delattr(gthread.ThreadWorker, "on_pending_socket_readable")
    worker = make_worker()
    try:
        assert type(worker) is gthread.ThreadWorker  # gthread's own methods from here on
        assert "on_pending_socket_readable" in caplog.text
    finally:
        worker.tmp.close()
