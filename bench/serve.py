"""Serving throughput and latency: gunicorn with the repo's config, on loopback, one run.

Starts ``gunicorn --config gunicorn.conf.py "server:create_app()"`` on a free loopback port and
drives it with C concurrent keep-alive clients (wrk when installed, else a bounded Python load
generator), round robin over three requests so machine noise hits all alike:

* ``GET /healthz``: the trivial JSON route of the same app and config, the ceiling;
* ``POST /predict`` with a 28x28 PNG (an MNIST test digit when $MNIST_DIR is set);
* ``POST /predict`` with a 400x300 photo-like JPEG (digit on grey, lit, noisy paper).

It prints requests/s, p50/p99 latency and server CPU per request (medians over the rounds),
and the ratios the upload issue set: small-PNG /predict throughput >= 0.60 of /healthz's,
400x300 JPEG >= 0.50 of the small PNG's (medians of each round's ratio: a round's runs are
seconds apart), p99 < 50 ms at 16. A run whose connections all landed on one worker is
repeated (see LOPSIDED): it measures where wrk's connections went, not the request.

``--floor`` adds a second gunicorn whose /predict skips decoding and the model
(bench/floor_gunicorn.conf.py): its ratio to /healthz is the most the first ratio can reach
on this stack, whatever the pipeline and the model cost.

    python bench/serve.py [--model model.npz] [--floor] [--concurrency 16] [--duration 8]
                          [--rounds 3]
"""

from __future__ import annotations

import argparse
import gzip
import http.client
import io
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models import DeepNetwork, preprocessing_config, save  # noqa: E402

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


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, workdir: Path, workers: int | None,
                 config: Path = REPO / "gunicorn.conf.py", extra_env: dict | None = None):
    env = dict(os.environ, MODEL_PATH=str(model), BIND=f"127.0.0.1:{port}",
               PROMETHEUS_MULTIPROC_DIR=str(workdir / "prometheus"), **(extra_env or {}))
    if workers:
        env["WEB_CONCURRENCY"] = str(workers)
    log = open(workdir / "gunicorn.log", "wb")  # noqa: SIM115 - closed by the caller
    process = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--config", str(config),
         "server:create_app()"], cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    wait_ready("gunicorn", process, f"http://127.0.0.1:{port}/readyz", workdir / "gunicorn.log")
    return process, log


def wait_ready(name: str, process: subprocess.Popen, url: str, log: Path,
               seconds: float = 60) -> None:
    """Return once GET ``url`` answers 200; SystemExit with the log if the server dies."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{name} exited:\n{log.read_text()}")
        try:
            with OPENER.open(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit(f"{name} did not become ready within {seconds:g} s")


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


COMPARE = "POST /predict PNG, compare"
FLOOR = "POST /predict PNG, no work"
FLOOR_CONFIG = REPO / "bench" / "floor_gunicorn.conf.py"

#: A run in which one worker did more than this share of the work landed (nearly) all of the
#: client's keep-alive connections on that worker: wrk opens them all at once, and whichever
#: worker wakes first may accept every one, leaving the other core idle. Seen on /healthz in
#: about one run in three (2 workers: ~1,400 instead of ~2,800 req/s, one worker at 0 CPU).
#: Such a run measures connection placement, not the request, so it is repeated.
LOPSIDED = 0.8
TRIES = 4


def measure_once(run, server_pid: int, url: str, body: Path | None, content_type: str,
                 args: argparse.Namespace, script: Path) -> dict:
    """One measurement of ``run`` (run_wrk or run_python), with the server's and the load
    generator's CPU ms/request: on a small machine the client competes with the server for
    the cores, the more so the cheaper the request (/healthz). A run whose connections all
    landed on one worker (LOPSIDED) is repeated, up to TRIES runs; ``row["tries"]`` counts."""
    has_proc = Path(f"/proc/{server_pid}/stat").exists()
    tries = 0
    while tries < TRIES:
        tries += 1
        before = server_cpu(server_pid) if has_proc else {}
        # this process (the Python client's threads) plus its finished children (wrk); the
        # server is a child too, but one not yet waited for, so it is not counted here
        client = sum(os.times()[:4])
        row = run(url, body, content_type, args.concurrency, args.duration, script)
        client = sum(os.times()[:4]) - client
        after = server_cpu(server_pid) if has_proc else {}
        share = busiest_worker_share(before, after, server_pid) if has_proc else 1.0
        if share <= LOPSIDED or len(after) <= 2:  # balanced, or one worker (+ the master)
            break
    cpu = sum(after.values()) - sum(before.values()) if has_proc else float("nan")
    requests = row["rps"] * args.duration
    row["cpu_ms"] = 1e3 * cpu / requests
    row["client_cpu_ms"] = 1e3 * client / requests
    row["busiest_share"], row["tries"] = share, tries
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


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and measure, with every file in a temporary directory."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path,
                        help="model file (default: ./model.npz if present, else an untrained "
                             "DeepNetwork(784, 10, 256, 2): inference costs the same)")
    parser.add_argument("--compare-model", type=Path,
                        help="a second model file served by its own gunicorn: its 28x28 PNG "
                             "/predict is measured in the same rounds (e.g. the CNN vs the MLP)")
    parser.add_argument("--floor", action="store_true",
                        help="also serve the model with decoding and inference replaced by "
                             "constants (bench/floor_gunicorn.conf.py) and measure its 28x28 PNG "
                             "/predict: the highest /predict to /healthz ratio this stack allows")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, help="WEB_CONCURRENCY (default: the config's)")
    parser.add_argument("--config", type=Path, default=REPO / "gunicorn.conf.py",
                        help="gunicorn config file, to compare a variant with the repo's")
    parser.add_argument("--client", choices=["wrk", "python"],
                        default="wrk" if shutil.which("wrk") else "python")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="digitgrad-bench-") as tmp:
        return measure(args, Path(tmp))


def round_ratios(results: dict[str, list[dict]], top: str, bottom: str) -> str:
    """The median of each round's throughput ratio top / bottom, and the rounds' ratios: a
    round's runs are seconds apart, so their ratio suffers least from other load."""
    ratios = [t["rps"] / b["rps"] for t, b in zip(results[top], results[bottom])]
    return (f"{statistics.median(ratios):.2f} (rounds "
            f"{', '.join(f'{r:.2f}' for r in ratios)})")


def measure(args: argparse.Namespace, workdir: Path) -> int:
    """Start gunicorn, run the rounds, print the table; files go to ``workdir``."""
    model = args.model or (REPO / "model.npz")
    if args.model is None and not model.is_file():
        model = workdir / "model.npz"
        network = DeepNetwork(784, 10, 256, 2, rng=np.random.default_rng(0))
        save(network, model, {"preprocessing": preprocessing_config(0.1307, 0.3081)})
        print("model: untrained DeepNetwork(784, 10, 256, 2) (no ./model.npz)")
    else:
        print(f"model: {model}")
    png, jpeg = workdir / "digit28.png", workdir / "photo400x300.jpg"
    png.write_bytes(small_png())
    jpeg.write_bytes(photo_jpeg())
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    # (name, server, path, body, content type); server 0 is the one measured
    cases = [("GET /healthz", 0, "/healthz", None, ""),
             ("POST /predict 28x28 PNG", 0, "/predict", png, "image/png"),
             ("POST /predict 400x300 JPEG", 0, "/predict", jpeg, "image/jpeg")]
    run = run_wrk if args.client == "wrk" else run_python

    load_before = os.getloadavg()[0]
    ports = [free_port()]
    servers = [start_server(model, ports[0], workdir, args.workers, args.config)]

    def add_server(name: str, model: Path, config: Path, env: dict | None = None) -> None:
        """Another gunicorn, whose 28x28 PNG /predict is case ``name`` of the same rounds."""
        directory = workdir / f"server{len(servers)}"
        directory.mkdir()
        ports.append(free_port())
        servers.append(start_server(model, ports[-1], directory, args.workers, config, env))
        cases.append((name, len(servers) - 1, "/predict", png, "image/png"))

    if args.compare_model is not None:
        print(f"compare model: {args.compare_model}")
        add_server(COMPARE, args.compare_model, args.config)
    if args.floor:
        add_server(FLOOR, model, FLOOR_CONFIG, {"BENCH_BASE_CONFIG": str(args.config)})
    results: dict[str, list[dict]] = {name: [] for name, *_ in cases}
    try:
        for round_ in range(args.rounds + 1):  # round 0: warm-up, and each must answer 200
            for name, index, path, body, content_type in cases:
                url = f"http://127.0.0.1:{ports[index]}{path}"
                if round_ == 0:
                    run(url, body, content_type, args.concurrency, 1, script)
                else:
                    results[name].append(measure_once(run, servers[index][0].pid, url, body,
                                                      content_type, args, script))
    finally:
        for process, log in servers:
            process.terminate()
            process.wait(timeout=30)
            log.close()

    workers = args.workers or os.environ.get("WEB_CONCURRENCY") or "config default"
    print(f"client: {args.client}, {args.concurrency} concurrent keep-alive connections, "
          f"{args.rounds} rounds x {args.duration:g} s per request, gunicorn workers: {workers}, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and "
          f"{os.getloadavg()[0]:.1f} after (other processes skew clock-time figures)")
    medians = print_medians(results)
    repeated = sum(r["tries"] - 1 for rows in results.values() for r in rows)
    print(f"runs repeated because one worker got (nearly) all connections: {repeated}")
    healthz, small = cases[0][0], medians[cases[1][0]]
    worst_p99 = max(medians[name]["p99"] for name, index, *_ in cases if index == 0)
    for label, top, bottom, target in (
            ("small-PNG /predict / /healthz", cases[1][0], healthz, 0.6),
            ("400x300 JPEG / small-PNG /predict", cases[2][0], cases[1][0], 0.5)):
        print(f"{label} throughput: {round_ratios(results, top, bottom)} (target >= "
              f"{target:.2f}; ratio of medians {medians[top]['rps'] / medians[bottom]['rps']:.2f}"
              f"); by server CPU per request: "
              f"{medians[bottom]['cpu_ms'] / medians[top]['cpu_ms']:.2f}")
    print(f"worst p99: {worst_p99:.1f} ms (target < 50 ms at 16 clients)")
    if args.compare_model is not None:
        compare = medians[COMPARE]
        print(f"28x28 PNG /predict, {model.name} / {args.compare_model.name} throughput: "
              f"{small['rps'] / compare['rps']:.2f}; by server CPU per request: "
              f"{compare['cpu_ms'] / small['cpu_ms']:.2f}")
    if args.floor:
        floor = medians[FLOOR]
        print(f"ceiling of small-PNG /predict / /healthz on this stack (decoding and model free):"
              f" {round_ratios(results, FLOOR, healthz)}; by server CPU per request: "
              f"{medians[healthz]['cpu_ms'] / floor['cpu_ms']:.2f}; decoding and the model "
              f"cost {small['cpu_ms'] - floor['cpu_ms']:.3f} ms of the small PNG's "
              f"{small['cpu_ms']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
