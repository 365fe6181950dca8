"""HTTP load for the serving benchmarks (bench.serve, bench.peers), measured side by side.

The request bodies they send; C concurrent keep-alive clients for some seconds (wrk when
installed, else a bounded Python load generator); each run's requests/s, p50/p99 latency, and
the server's and the client's CPU per request; a table of medians over rounds, and ratios taken
round by round.
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import os
import re
import statistics
import subprocess
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
WRK_SCRIPT = """
local path = os.getenv("BENCH_BODY")
if path and path ~= "" then
  local f = assert(io.open(path, "rb"))
  wrk.body = f:read("*a")
  f:close()
  wrk.method = "POST"
  wrk.headers["Content-Type"] = os.getenv("BENCH_TYPE")
end
"""


def small_png() -> bytes:
    """A 28x28 grayscale PNG: the first MNIST test digit, or a drawn 7 without MNIST."""
    mnist = os.environ.get("MNIST_DIR")
    path = Path(mnist or ".") / "t10k-images-idx3-ubyte.gz"
    if mnist and path.is_file():
        with gzip.open(path) as f:
            pixels = np.frombuffer(f.read(16 + 784), np.uint8, offset=16).reshape(28, 28)
        im = Image.fromarray(pixels)
    else:
        im = Image.new("L", (28, 28), 0)
        ImageDraw.Draw(im).line([(7, 6), (21, 6), (12, 23)], fill=255, width=3)
    out = io.BytesIO()
    im.save(out, format="PNG")
    return out.getvalue()


def photo_jpeg(seed: int = 0) -> bytes:
    """400x300 RGB JPEG: a dark 7 on grey paper with a lighting gradient, noise and blur."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:300, 0:400]
    paper = 190 + 35 * xx / 400 - 25 * yy / 300 + rng.normal(0, 5, (300, 400))
    grey = Image.fromarray(np.clip(paper, 0, 255).astype(np.uint8))
    im = Image.merge("RGB", (grey, grey, grey.point(lambda v: v * 0.95)))
    draw = ImageDraw.Draw(im)
    if FONT.is_file():
        draw.text((150, 40), "7", fill=(45, 40, 55), font=ImageFont.truetype(str(FONT), 190))
    else:
        draw.line([(140, 70), (260, 70), (180, 250)], fill=(45, 40, 55), width=18)
    im = im.filter(ImageFilter.GaussianBlur(1.2))
    out = io.BytesIO()
    im.save(out, format="JPEG", quality=85)
    return out.getvalue()


def upload(png: bytes) -> tuple[bytes, str]:
    """A multipart/form-data body with the image as field "image", and its content type."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; '
            f'filename="digit.png"\r\nContent-Type: image/png\r\n\r\n').encode()
    body += png + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def server_cpu(master_pid: int) -> dict[int, float]:
    """User + system CPU seconds so far of the gunicorn master and of each worker, by pid.

    CPU per request is steadier than requests/s on a shared machine: other processes slow the
    clock-time figures, much less the CPU each request costs. Per process, it also shows how
    the load was spread over the workers.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    seconds = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a process that just exited
        pid = int(stat.parent.name)
        if pid == master_pid or int(fields[1]) == master_pid:  # fields[1] is the parent pid
            seconds[pid] = (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return seconds


def busiest_worker_share(before: dict[int, float], after: dict[int, float],
                         master_pid: int) -> float:
    """The largest share of the workers' CPU one worker used between two ``server_cpu``s."""
    used = [after[pid] - before.get(pid, 0.0) for pid in after if pid != master_pid]
    total = sum(used)
    return max(used) / total if len(used) > 1 and total > 0 else 1.0


def parse_duration(value: str, unit: str) -> float:
    return float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def run_wrk(url: str, body: Path | None, content_type: str, concurrency: int,
            seconds: float, script: Path) -> dict:
    env = dict(os.environ, BENCH_BODY=str(body or ""), BENCH_TYPE=content_type)
    # one wrk thread: an event loop keeps 16 connections busy and leaves the cores to gunicorn
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{max(1, round(seconds))}s", "--latency",
         "-s", str(script), url],
        env=env, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out or "Socket errors" in out:
        raise SystemExit(f"errors during the run of {url}:\n{out}")
    latency = {p: parse_duration(v, unit)
               for p, v, unit in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)", out, re.M)}
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"]}


def run_python(url: str, body: Path | None, content_type: str, concurrency: int,
               seconds: float, script: Path | None = None) -> dict:
    """Bounded load generator: C threads, each one keep-alive connection, for ``seconds``.

    Python clients cost CPU on the same machine (and the GIL), so figures are lower than
    wrk's; the ratios between routes are what it is for.
    """
    del script
    host, port = url.split("//")[1].split("/")[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    payload = body.read_bytes() if body else None
    latencies: list[float] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + seconds

    def client() -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        mine = []
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            if payload is None:
                conn.request("GET", path)
            else:
                conn.request("POST", path, payload, {"Content-Type": content_type})
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}")
            mine.append(time.perf_counter() - start)
        conn.close()
        with lock:
            latencies.extend(mine)

    threads = [threading.Thread(target=client) for _ in range(concurrency)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"rps": len(ms) / elapsed, "p50": float(np.percentile(ms, 50)),
            "p99": float(np.percentile(ms, 99))}


def measure_once(run, server_pid: int, url: str, body: Path | None, content_type: str,
                 args: argparse.Namespace, script: Path) -> dict:
    """One measurement of ``run`` (run_wrk or run_python), with the server's and the load
    generator's CPU ms/request: on a small machine the client competes with the server for
    the cores, the more so the cheaper the request (/healthz). ``row["busiest_share"]`` is the
    busiest worker's share of the workers' CPU: near 1 when every connection landed on one
    worker. Such a run is reported like any other, never repeated: a client pool stuck on one
    worker is what users would meet."""
    has_proc = Path(f"/proc/{server_pid}/stat").exists()
    before = server_cpu(server_pid) if has_proc else {}
    # this process (the Python client's threads) plus its finished children (wrk); the
    # server is a child too, but one not yet waited for, so it is not counted here
    client = sum(os.times()[:4])
    row = run(url, body, content_type, args.concurrency, args.duration, script)
    client = sum(os.times()[:4]) - client
    after = server_cpu(server_pid) if has_proc else {}
    cpu = sum(after.values()) - sum(before.values()) if has_proc else float("nan")
    requests = row["rps"] * args.duration
    row["cpu_ms"] = 1e3 * cpu / requests
    row["client_cpu_ms"] = 1e3 * client / requests
    row["busiest_share"] = busiest_worker_share(before, after, server_pid) if has_proc else 1.0
    return row


def print_medians(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Print one row per case (medians over its rounds, req/s range); return the medians."""
    print(f"{'request':<28} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'server CPU ms/req':>18}"
          f" {'client CPU ms/req':>18}   (medians of rounds; req/s range)")
    medians = {}
    for name, rows in results.items():
        medians[name] = {k: statistics.median(r[k] for r in rows)
                         for k in ("rps", "p50", "p99", "cpu_ms", "client_cpu_ms")}
        m = medians[name]
        low, high = min(r["rps"] for r in rows), max(r["rps"] for r in rows)
        print(f"{name:<28} {m['rps']:>9.0f} {m['p50']:>8.2f} {m['p99']:>8.2f} "
              f"{m['cpu_ms']:>18.3f} {m['client_cpu_ms']:>18.3f}   {low:.0f}-{high:.0f}")
    return medians


def round_ratios(results: dict[str, list[dict]], top: str, bottom: str) -> str:
    """The median of each round's throughput ratio top / bottom, and the rounds' ratios: a
    round's runs are seconds apart, so their ratio suffers least from other load."""
    ratios = [t["rps"] / b["rps"] for t, b in zip(results[top], results[bottom])]
    return (f"{statistics.median(ratios):.2f} (rounds "
            f"{', '.join(f'{r:.2f}' for r in ratios)})")
