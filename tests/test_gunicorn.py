"""Real server processes on loopback ports: gunicorn with the repo's gunicorn.conf.py (the
production path) and ``python -m server`` (the development server)."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from drawing import digit_png
from serving import gunicorn_env, request, running_gunicorn

from bench.servers import REPO, free_port, wait_ready

pytest.importorskip("gunicorn")


@pytest.fixture
def server(tiny_model_path, tmp_path):
    """gunicorn serving the tiny model with 2 workers; yields (base URL, process, metrics dir)."""
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale file from an earlier run")
    log = tmp_path / "gunicorn.log"
    with running_gunicorn(tiny_model_path, log, metrics_dir, MAX_UPLOAD_BYTES="20000") as (
            base, process):
        yield base, process, metrics_dir, log


def test_serves_predicts_counts_across_workers_and_stops_gracefully(server):
    base, process, metrics_dir, log = server
    assert not (metrics_dir / "counter_1.db").exists(), "stale metrics were not cleared"
    png = digit_png()
    status, body = request(base + "/predict", png, {"Content-Type": "image/png"})
    assert status == 200
    assert set(json.loads(body)) == {"digit", "confidence", "probabilities", "is_digit",
                                     "digit_probability", "model"}

    # Keep predicting, concurrently, until both workers have answered some (each writes its
    # own counter file): the scrape must then report the sum over both.
    sent = 1
    with ThreadPoolExecutor(8) as pool:
        for _ in range(30):
            statuses = list(pool.map(
                lambda _: request(base + "/predict", png, {"Content-Type": "image/png"})[0],
                range(16)))
            assert statuses == [200] * 16
            sent += 16
            if len(list(metrics_dir.glob("counter_*.db"))) >= 2:
                break
    assert len(list(metrics_dir.glob("counter_*.db"))) == 2, "one worker answered everything"
    status, metrics = request(base + "/metrics")
    assert status == 200
    line = re.search(rb'digitgrad_http_requests_total\{method="POST",route="/predict",'
                     rb'status="200"\} (\S+)', metrics)
    assert line and float(line.group(1)) == sent
    predictions = re.findall(rb"digitgrad_predictions_total\{digit=\"\d\"\} (\S+)", metrics)
    assert sum(float(v) for v in predictions) == sent

    # Too many bytes: 413 in the envelope, with a Content-Length and chunked alike.
    status, body = request(base + "/predict", bytes(30_000), {"Content-Type": "image/png"})
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    chunks = iter([bytes(10_000)] * 3)
    status, body = request(base + "/predict", chunks, {"Content-Type": "image/png",
                                                       "Transfer-Encoding": "chunked"})
    assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"
    status, body = request(base + "/nowhere")
    assert status == 404 and json.loads(body)["error"]["code"] == "not_found"

    # Graceful stop: a request in flight when SIGTERM arrives (its body half sent) is answered.
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        head = (f"POST /predict HTTP/1.1\r\nHost: {host}\r\nContent-Type: image/png\r\n"
                f"Content-Length: {len(png)}\r\nConnection: close\r\n\r\n").encode()
        conn.sendall(head + png[:20])
        time.sleep(0.5)  # the worker is now reading this request's body
        process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        conn.sendall(png[20:])
        reply = conn.makefile("rb").read()
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    assert process.wait(timeout=30) == 0
    text = log.read_text()
    assert "Shutting down: Master" in text and "Traceback" not in text
    # One JSON line per request from the app (server/requestlog.py), gunicorn's access log off.
    logged = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    predicted = [line for line in logged if (line["route"], line["status"]) == ("/predict", 200)]
    assert predicted and all(line["latency_ms"] > 0 and "digit" in line for line in predicted)
    assert not re.search(r'"POST /predict HTTP/1.1" 200', text), "gunicorn's access log is on"


@pytest.mark.parametrize("problem", ["missing", "garbage"])
def test_bad_model_stops_the_master_with_one_line(tmp_path, problem):
    model = tmp_path / "model.npz"
    if problem == "garbage":
        model.write_bytes(b"this is not a model")
    env = gunicorn_env(model, BIND=f"127.0.0.1:{free_port()}")
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "--config", str(REPO / "gunicorn.conf.py"),
         "server:create_app()"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode != 0
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(model) in lines[0] and "Traceback" not in lines[0]


def test_dev_server_serves_the_model(tiny_model_path, tmp_path):
    port = free_port()
    log = tmp_path / "dev.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "server", "--model", str(tiny_model_path), "--port", str(port)],
            cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(f"http://127.0.0.1:{port}", process, log)
        status, body = request(f"http://127.0.0.1:{port}/predict", digit_png(),
                               {"Content-Type": "image/png"})
        assert status == 200 and "digit" in json.loads(body)
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_dev_server_with_missing_model_exits_with_one_line(tmp_path):
    missing = tmp_path / "nowhere.npz"
    result = subprocess.run([sys.executable, "-m", "server", "--model", str(missing)],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "no such file" in lines[0]
