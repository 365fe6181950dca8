"""Memory of real gunicorn workers (the repo's config, its default thread count), read from
/proc: VmRSS (resident now) and VmHWM (the peak). Never timing.

- After a mix of in-limit requests an idle worker returns to within 100 MB of its size after
  start-up: freed memory goes back to the system, however many threads served.
- The request bodies a worker holds at once are bounded in bytes (MAX_BODY_BYTES_PER_WORKER),
  whatever the number of connections sending them.
"""

from __future__ import annotations

import io
import json
import socket
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from drawing import digit_png
from PIL import Image
from serving import multipart, request, running_gunicorn

from bench.servers import proc_status, settled_rss, worker_pids

MB = 2**20


def photo(width: int, height: int) -> bytes:
    """A large RGBA PNG of a dark bar on white, small on disk (it compresses well)."""
    pixels = np.full((height, width, 4), 255, np.uint8)
    pixels[height // 4:3 * height // 4, width // 2 - width // 40:width // 2 + width // 40, :3] = 0
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, "PNG")
    return out.getvalue()


def v2_images(files: list[bytes]) -> tuple[bytes, dict]:
    payload = b"".join(len(data).to_bytes(4, "little") + data for data in files)
    query = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)],
                                    "parameters": {"binary_data_size": len(payload)}}]}).encode()
    return query + payload, {"Inference-Header-Content-Length": str(len(query))}


def test_an_idle_worker_returns_to_its_start_up_size(shared_tiny_model_path, tmp_path):
    big = photo(3000, 2000)  # 6 MP RGBA: ~50 MB while decoded
    batch, batch_type = multipart("images", [photo(1200, 900)] * 8 + [digit_png()] * 8)
    v2_body, v2_headers = v2_images([photo(1500, 1000)] * 4)
    calls = ([("/predict", big, {"Content-Type": "image/png"})] * 12
             + [("/predict/batch", batch, {"Content-Type": batch_type})] * 2
             + [("/v2/models/digitgrad-image/infer", v2_body, v2_headers)] * 2)
    with running_gunicorn(shared_tiny_model_path, tmp_path / "gunicorn.log",
                          WEB_CONCURRENCY="1", GUNICORN_THREADS=None) as (base, process):
        (worker,) = worker_pids(process.pid)
        start = settled_rss(worker)
        # 8 at once: each lands on its own thread, as behind a client pool
        with ThreadPoolExecutor(8) as pool:
            # a deadline only for a hung server: on a busy machine 8 photos queue for long
            statuses = list(pool.map(
                lambda call: request(base + call[0], call[1], call[2], timeout=300)[0], calls))
        assert statuses == [200] * len(calls)
        idle = settled_rss(worker)
        peak = proc_status(worker)["VmHWM"]
    assert idle - start < 100 * MB, f"start {start / MB:.0f} MB, idle {idle / MB:.0f} MB"
    # one upload decoded at a time (COMPUTE_SLOTS) plus the bodies held: well under 300 MB
    assert peak - start < 300 * MB, f"start {start / MB:.0f} MB, peak {peak / MB:.0f} MB"


def send_body(base: str, path: str, length: int) -> bytes:
    """POST ``length`` bytes as fast as the server takes them; its answer."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=60) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {length}\r\nConnection: close\r\n\r\n".encode())
        chunk = b" " * (1 << 20)
        try:
            for _ in range(length // len(chunk)):
                conn.sendall(chunk)
            conn.sendall(b" " * (length % len(chunk)))
        except OSError:
            pass  # answered and closed before the whole body was taken: a refusal
        answer = b""
        while data := conn.recv(65536):
            answer += data
    return answer


def test_bodies_held_at_once_are_bounded_per_worker(shared_tiny_model_path, tmp_path):
    """Eight connections each sending a body of the V2 image route's limit (~16 MiB here):
    past MAX_BODY_BYTES_PER_WORKER (~21 MiB) the worker answers 503 instead of holding them."""
    upload = 1 << 20
    with running_gunicorn(shared_tiny_model_path, tmp_path / "gunicorn.log",
                          WEB_CONCURRENCY="1", GUNICORN_THREADS=None,
                          MAX_UPLOAD_BYTES=str(upload)) as (base, process):
        (worker,) = worker_pids(process.pid)
        start = settled_rss(worker)
        length = 16 * (upload + 4)  # within the route's limit: refused only for the budget
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: send_body(
                base, "/v2/models/digitgrad-image/infer", length), range(8)))
        peak = proc_status(worker)["VmHWM"]
    # 8 x 16 MiB would be 128 MiB of bodies; the budget holds ~21 MiB (and one copy of a body)
    assert peak - start < 80 * MB, f"start {start / MB:.0f} MB, peak {peak / MB:.0f} MB"
    statuses = [int(answer.split(b" ", 2)[1]) for answer in answers]
    assert set(statuses) <= {400, 503} and 503 in statuses, statuses
