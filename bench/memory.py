"""Worker memory under the heaviest in-limit requests: gunicorn with the repo's config on
loopback, its default thread count, the default limits; read from /proc (VmRSS, VmHWM).

Each workload runs on a fresh server; C clients send N requests, then the server idles:

* ``photo``: ``POST /predict``, a 40 MP RGBA PNG (the default ``MAX_IMAGE_PIXELS``) in a file
  of ``MAX_UPLOAD_BYTES`` (padded after its end);
* ``batch``: ``POST /predict/batch``, ``MAX_BATCH_FILES`` such files (the largest body a route
  takes);
* ``v2``: the same files as one V2 ``digitgrad-image`` request (binary tensor data);
* ``mix``: the three in turn;
* ``json``: V2 ``digitgrad`` pixels as JSON at its body limit (``MAX_TENSOR_IMAGES`` images'
  worth), as many numbers as fit.

For each worker it prints its size after start-up, its peak (VmHWM) and its size once idle; and
the master's. A request refused for the worker's body budget (503) or cut off mid-body (the
server answered and closed: "reset") counts as refused, not as a failure.

    python -m bench.memory --model model.npz [--workloads photo batch v2 mix json]
                           [--requests 16] [--concurrency 16] [--workers 2]
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from bench.servers import gunicorn_env, gunicorn_process, proc_status, settled_rss, worker_pids

MB = 2**20
UPLOAD = 5 * MB  # the default MAX_UPLOAD_BYTES
BATCH = 16  # the default MAX_BATCH_FILES
TENSOR_IMAGES = 1024  # the default MAX_TENSOR_IMAGES


def photo(size: int = UPLOAD) -> bytes:
    """An 8000x5000 RGBA PNG of a dark bar on white, padded after its end to ``size`` bytes."""
    width, height = 8000, 5000
    pixels = np.full((height, width, 4), 255, np.uint8)
    pixels[height // 4:3 * height // 4, width // 2 - width // 40:width // 2 + width // 40, :3] = 0
    out = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(out, "PNG")
    data = out.getvalue()
    return data + bytes(size - 200 - len(data))  # room for the multipart part headers


def multipart(field: str, files: list[bytes]) -> tuple[bytes, str]:
    boundary = "bench-memory-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
             f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode() + data + b"\r\n"
             for i, data in enumerate(files)]
    return (b"".join(parts) + f"--{boundary}--\r\n".encode(),
            f"multipart/form-data; boundary={boundary}")


def v2_images(files: list[bytes]) -> tuple[bytes, dict]:
    payload = b"".join(len(data).to_bytes(4, "little") + data for data in files)
    query = json.dumps({"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(files)],
                                    "parameters": {"binary_data_size": len(payload)}}]}).encode()
    return query + payload, {"Inference-Header-Content-Length": str(len(query)),
                             "Content-Type": "application/octet-stream"}


def json_pixels(images: int = TENSOR_IMAGES) -> bytes:
    """A V2 pixels request as JSON at its size limit (24 bytes a pixel plus 64 KiB), as many
    numbers as fit: each becomes a Python float while the body is parsed."""
    limit = images * 28 * 28 * 24 + 64 * 1024
    head = json.dumps({"inputs": [{"name": "pixels", "datatype": "FP32",
                                   "shape": [images, 28, 28], "data": []}]})
    count = (limit - len(head)) // 4
    data = ",".join(["0.5"] * count)
    return head.replace('"data": []', f'"data": [{data}]').encode()[:limit]


def calls(workload: str) -> list[tuple[str, bytes, dict]]:
    """The requests (path, body, headers) a workload sends in turn."""
    one = photo()
    found = []
    if workload in ("photo", "mix"):
        found.append(("/predict", one, {"Content-Type": "image/png"}))
    if workload in ("batch", "mix"):
        body, content_type = multipart("images", [one] * BATCH)
        found.append(("/predict/batch", body, {"Content-Type": content_type}))
    if workload in ("v2", "mix"):
        found.append(("/v2/models/digitgrad-image/infer", *v2_images([one] * BATCH)))
    if workload == "json":
        found.append(("/v2/models/digitgrad/infer", json_pixels(),
                      {"Content-Type": "application/json"}))
    return found


def post(base: str, path: str, body: bytes, headers: dict) -> str:
    """POST on a new connection; the status, or "reset" if the server answered before taking
    the whole body and the answer was lost with the connection."""
    host, port = base.removeprefix("http://").split(":")
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            + "\r\n").encode()
    answer = b""
    with socket.create_connection((host, int(port)), timeout=600) as conn:
        try:
            conn.sendall(head)
            view = memoryview(body)
            for start in range(0, len(body), MB):
                conn.sendall(view[start:start + MB])
        except OSError:
            pass  # answered early (a refusal) and closed
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer.split(b" ", 2)[1].decode() if answer else "reset"


def measure(model: Path, workload: str, requests: int, concurrency: int, workers: int,
            folder: Path) -> None:
    """Run one workload on a fresh server and print its memory."""
    todo = calls(workload)
    todo = [todo[i % len(todo)] for i in range(requests)]
    env = gunicorn_env(model, WEB_CONCURRENCY=str(workers))
    with gunicorn_process(env, folder / f"gunicorn-{workload}.log") as (base, process):
        while len(pids := worker_pids(process.pid)) < workers:  # ready: one worker answered
            time.sleep(0.1)
        start = {pid: settled_rss(pid) for pid in pids}
        began = time.monotonic()
        with ThreadPoolExecutor(concurrency) as pool:
            statuses = list(pool.map(lambda call: post(base, *call), todo))
        seconds = time.monotonic() - began
        counts = ", ".join(f"{s}: {statuses.count(s)}" for s in sorted(set(statuses)))
        print(f"{workload}: {requests} requests, {concurrency} at a time, {seconds:.0f} s "
              f"({counts})")
        for pid in pids:
            idle, peak = settled_rss(pid), proc_status(pid)["VmHWM"]
            print(f"  worker: after start-up {start[pid] / MB:.0f} MiB, peak {peak / MB:.0f} "
                  f"MiB (+{(peak - start[pid]) / MB:.0f}), idle {idle / MB:.0f} MiB "
                  f"(+{(idle - start[pid]) / MB:.0f})")
        master = proc_status(process.pid)
        print(f"  master: {master['VmRSS'] / MB:.0f} MiB, peak {master['VmHWM'] / MB:.0f} MiB")
        sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a model file to serve")
    parser.add_argument("--workloads", nargs="+", default=["photo", "batch", "v2", "mix"],
                        choices=["photo", "batch", "v2", "mix", "json"])
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as folder:
        for workload in args.workloads:
            measure(args.model.resolve(), workload, args.requests, args.concurrency,
                    args.workers, Path(folder))
    return 0


if __name__ == "__main__":
    sys.exit(main())
