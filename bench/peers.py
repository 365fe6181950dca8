"""Serving against the peers: our gunicorn, KServe's model server and Seldon's MLServer, one run.

Starts on loopback, each with the same number of worker processes and wrapping the same model
file through ``server.model.LoadedModel``:

* ours:     ``gunicorn --config gunicorn.conf.py "server:create_app()"`` (the repo's config);
* baseline: the same from another checkout (--baseline-tree DIR, e.g. the previous main),
            for a before/after table measured in the same rounds;
* KServe:   ``kserve.ModelServer(workers=N)`` (bench/kserve_model.py, under --kserve-python);
* MLServer: ``mlserver start`` with ``parallel_workers: N`` (bench/mlserver_model.py, under
            --mlserver-python).

The peers live in their own virtual environments, never in the project's dependencies:

    python3 -m venv /tmp/kserve && /tmp/kserve/bin/pip install 'kserve==0.21.0' flask pillow
    python3 -m venv /tmp/mlserver && /tmp/mlserver/bin/pip install 'mlserver==1.7.1' \\
        'uvloop<0.21' flask pillow        # MLServer 1.7.1 does not start with uvloop 0.21
    python -m bench.peers --kserve-python /tmp/kserve/bin/python \\
        --mlserver-python /tmp/mlserver/bin/python [--baseline-tree DIR] [--model model.npz]

(flask and pillow because the peers import our ``server.model``.) wrk (one thread, C keep-alive
connections) sends every server the same requests: ``POST /v2/models/digitgrad/infer`` with
B 28x28 images (MNIST's first test digits when $MNIST_DIR is set) as JSON and as binary tensor
data, and our ``POST /predict`` with a 28x28 PNG. Rounds are interleaved (each round measures
every case on every server, back to back) and every round is reported: none is discarded or
repeated, whichever worker the connections landed on. Per case and server: req/s (median,
range, largest deviation from the median), p50/p99, images/s, server CPU per request (all the
server's processes), and how the CPU spread over its processes; at the end, memory per process.
A request a server refuses (e.g. a batch over its limit) is reported, not measured. At
--overload-connections the table adds the share answered 503 and the p99 of admitted requests.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from bench import loadgen
from bench.loadgen import server_cpu
from bench.servers import OPENER, REPO, free_port, gunicorn_env, start_gunicorn, stop, wait_ready

INFER = "/v2/models/digitgrad/infer"
HEADER_LENGTH = "Inference-Header-Content-Length"
SIDE = 28

#: wrk's request (bench.loadgen's: the body file and Content-Type; here also one extra header
#: from the environment) and, at the end, one machine-readable line: counts and latency
#: percentiles in microseconds. "admitted_p99" is the latency exceeded by as many responses as
#: 1% of the 2xx ones: since refused (503) responses above it are counted too, the admitted
#: requests' own p99 is at most that.
WRK_SCRIPT = loadgen.WRK_SCRIPT + """
local extra = os.getenv("BENCH_HEADER")
if extra and extra ~= "" then
  local name, value = extra:match("^([^:]+):%s*(.*)$")
  wrk.headers[name] = value
end
function done(summary, latency, requests)
  local refused = summary.errors.status
  local ok = summary.requests - refused
  local admitted = 0
  if ok > 0 then admitted = latency:percentile(100 - ok / summary.requests) end
  io.write(string.format(
    "BENCH requests=%d refused=%d socket_errors=%d seconds=%f p50=%d p99=%d admitted_p99=%d\\n",
    summary.requests, refused, summary.errors.connect + summary.errors.read
      + summary.errors.write + summary.errors.timeout, summary.duration / 1e6,
    latency:percentile(50), latency:percentile(99), admitted))
end
"""


# --- requests -------------------------------------------------------------------------------


def digits(count: int) -> np.ndarray:
    """``count`` 28x28 digits in [0, 1]: MNIST's first test images, or a drawn 7 repeated."""
    mnist = os.environ.get("MNIST_DIR")
    path = Path(mnist or ".") / "t10k-images-idx3-ubyte.gz"
    if mnist and path.is_file():
        with gzip.open(path) as f:
            raw = np.frombuffer(f.read(16 + count * SIDE * SIDE), np.uint8, offset=16)
        images = raw.reshape(-1, SIDE, SIDE)
    else:
        im = Image.new("L", (SIDE, SIDE), 0)
        ImageDraw.Draw(im).line([(7, 6), (21, 6), (12, 23)], fill=255, width=3)
        images = np.asarray(im)[None]
    images = np.resize(images, (count, SIDE, SIDE))  # repeats when MNIST is absent
    return images.astype(np.float32) / 255


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.round(image * 255).astype(np.uint8)).save(out, format="PNG")
    return out.getvalue()


def v2_json(images: np.ndarray) -> bytes:
    """A V2 inference request with the pixels as JSON numbers (flat, row-major)."""
    return json.dumps({"id": "bench", "inputs": [{
        "name": "pixels", "datatype": "FP32", "shape": list(images.shape),
        "data": images.ravel().tolist()}]}).encode()


def v2_binary(images: np.ndarray) -> tuple[bytes, int]:
    """A V2 inference request with the pixels as binary tensor data; (body, JSON length)."""
    data = images.astype("<f4").tobytes()
    header = json.dumps({"id": "bench", "inputs": [{
        "name": "pixels", "datatype": "FP32", "shape": list(images.shape),
        "parameters": {"binary_data_size": len(data)}}]}).encode()
    return header + data, len(header)


@dataclass
class Case:
    """One request sent to every server that serves it, at ``connections``."""

    name: str
    path: str
    body: Path
    content_type: str
    images: int
    connections: int
    header: str = ""  # one extra "Name: value"
    ours_only: bool = False


def make_cases(workdir: Path, args: argparse.Namespace) -> list[Case]:
    """The JSON and binary V2 requests at each batch size, and /predict's PNG."""
    cases = []
    largest = max(args.batches)
    images = digits(largest)
    (workdir / "digit.png").write_bytes(png(images[0]))
    for connections in args.connections:
        cases.append(Case(f"V2 JSON 1 image, {connections} conn", INFER,
                          workdir / "json1.json", "application/json", 1, connections))
    (workdir / "json1.json").write_bytes(v2_json(images[:1]))
    for batch in args.batches:
        if batch <= args.json_batch_limit and batch > 1:
            body = workdir / f"json{batch}.json"
            body.write_bytes(v2_json(images[:batch]))
            cases.append(Case(f"V2 JSON {batch} images", INFER, body, "application/json",
                              batch, args.connections[0]))
        body = workdir / f"binary{batch}.bin"
        data, length = v2_binary(images[:batch])
        body.write_bytes(data)
        cases.append(Case(f"V2 binary {batch} image{'s' * (batch > 1)}", INFER, body,
                          "application/octet-stream", batch, args.connections[0],
                          header=f"{HEADER_LENGTH}: {length}"))
    cases.append(Case(f"/predict 28x28 PNG, {args.connections[0]} conn", "/predict",
                      workdir / "digit.png", "image/png", 1, args.connections[0],
                      ours_only=True))
    if args.overload_connections:
        n = args.overload_connections
        cases.append(Case(f"V2 JSON 1 image, {n} conn", INFER, workdir / "json1.json",
                          "application/json", 1, n))
        cases.append(Case(f"/predict 28x28 PNG, {n} conn", "/predict", workdir / "digit.png",
                          "image/png", 1, n, ours_only=True))
    return cases


# --- servers --------------------------------------------------------------------------------


@dataclass
class Server:
    name: str
    process: subprocess.Popen
    port: int
    log: Path
    ours: bool  # serves /predict too
    refused: dict[str, str] = field(default_factory=dict)  # case name -> why not measured

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


def one_thread_env(**extra: str) -> dict:
    """The environment of a server: one BLAS thread per process, as our config sets."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.update(extra)
    return env


def launch(name: str, command: list[str], cwd: Path, env: dict, workdir: Path, ready: str,
           port: int, ours: bool) -> Server:
    log = workdir / f"{name.lower()}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
    server = Server(name, process, port, log, ours)
    wait_ready(server.url(""), process, log, seconds=180, path=ready, name=name)
    return server


def start_ours(name: str, tree: Path, model: Path, workers: int, workdir: Path) -> Server:
    """``tree``'s gunicorn.conf.py and app, under this interpreter (with this venv's packages)."""
    port = free_port()
    metrics = workdir / f"{name.lower()}-prometheus"
    metrics.mkdir()
    env = gunicorn_env(model, metrics, BIND=f"127.0.0.1:{port}", WEB_CONCURRENCY=str(workers),
                       PYTHONPATH=str(tree))
    log = workdir / f"{name.lower()}.log"
    process = start_gunicorn(env, log, tree / "gunicorn.conf.py", tree)
    server = Server(name, process, port, log, ours=True)
    wait_ready(server.url(""), process, log, name=name)
    return server


def start_kserve(python: str, model: Path, workers: int, workdir: Path) -> Server:
    port = free_port()
    # KServe writes two latency lines per request besides its access line unless told not
    # to; every server here logs one line per request at most (ours: the JSON request log).
    command = [python, "-m", "bench.kserve_model", "--model", str(model),
               "--http_port", str(port), "--workers", str(workers),
               "--enable_latency_logging", "false"]
    env = one_thread_env(PYTHONPATH=str(REPO))
    return launch("KServe", command, workdir, env, workdir, "/v2/models/digitgrad/ready", port,
                  ours=False)


def start_mlserver(python: str, model: Path, workers: int, workdir: Path) -> Server:
    """``mlserver start`` on a folder with its settings: N parallel inference workers.

    ``debug`` is on by default in MLServer (debug log level); off here, which also turns off its
    access log."""
    port = free_port()
    folder = workdir / "mlserver"
    folder.mkdir()
    (folder / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(), "parallel_workers": workers, "debug": False}))
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "digitgrad", "implementation": "bench.mlserver_model.DigitgradModel",
        "parameters": {"uri": str(model)}}))
    command = [str(Path(python).parent / "mlserver"), "start", str(folder)]
    env = one_thread_env(PYTHONPATH=str(REPO))
    return launch("MLServer", command, workdir, env, workdir, "/v2/models/digitgrad/ready",
                  port, ours=False)


def post(server: Server, case: Case) -> tuple[int, bytes]:
    headers = {"Content-Type": case.content_type}
    if case.header:
        name, value = case.header.split(": ", 1)
        headers[name] = value
    request = urllib.request.Request(server.url(case.path), data=case.body.read_bytes(),
                                     headers=headers)
    try:
        with OPENER.open(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def first_digit(status: int, body: bytes) -> int | None:
    """The first predicted digit of a V2 JSON answer (or /predict's), None if there is none."""
    try:
        answer = json.loads(body)
        if "digit" in answer:
            return answer["digit"]
        output = next(o for o in answer["outputs"] if o["name"] == "digit")
        return int(output["data"][0])
    except (ValueError, KeyError, StopIteration, TypeError, IndexError):
        return None


def probe(servers: list[Server], cases: list[Case]) -> None:
    """Send each case once to each server: a refused one is noted and not measured; the
    servers must agree on the first digit."""
    for case in cases:
        answers = {}
        for server in servers:
            if case.ours_only and not server.ours:
                continue
            status, body = post(server, case)
            if status != 200:
                message = body[:160].decode("utf-8", "replace").replace("\n", " ")
                server.refused[case.name] = f"HTTP {status}: {message}"
                continue
            answers[server.name] = first_digit(status, body)
        if len(set(answers.values())) > 1:
            raise SystemExit(f"{case.name}: the servers disagree on the first digit: {answers}")


def measured(server: Server, case: Case) -> bool:
    return (server.ours or not case.ours_only) and case.name not in server.refused


# --- one measurement ------------------------------------------------------------------------


def run_wrk(url: str, case: Case, connections: int, seconds: float, script: Path) -> dict:
    env = dict(os.environ, BENCH_BODY=str(case.body), BENCH_TYPE=case.content_type,
               BENCH_HEADER=case.header)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(seconds))}s", "--timeout", "10s",
         "-s", str(script), url], env=env, capture_output=True, text=True, check=True).stdout
    line = re.search(r"^BENCH (.*)$", out, re.M)
    if line is None:
        raise SystemExit(f"wrk printed no summary for {url}:\n{out}")
    values = {k: float(v) for k, v in (item.split("=") for item in line.group(1).split())}
    ok = values["requests"] - values["refused"]
    return {"rps": ok / values["seconds"], "requests": values["requests"],
            "refused": values["refused"], "socket_errors": values["socket_errors"],
            "p50": values["p50"] / 1e3, "p99": values["p99"] / 1e3,
            "admitted_p99": values["admitted_p99"] / 1e3}


def measure_once(server: Server, case: Case, args: argparse.Namespace, script: Path) -> dict:
    """One wrk run of ``case`` on ``server``, with the CPU its processes used meanwhile."""
    before = server_cpu(server.process.pid)
    row = run_wrk(server.url(case.path), case, case.connections, args.duration, script)
    after = server_cpu(server.process.pid)
    used = {pid: after[pid] - before.get(pid, 0.0) for pid in after}
    total = sum(used.values())
    row["cpu_ms"] = 1e3 * total / max(row["requests"], 1)
    row["images_s"] = row["rps"] * case.images
    # the busiest processes' shares of the server's CPU: one worker at ~100% means every
    # connection landed on it
    row["shares"] = sorted((u / total for u in used.values() if total and u / total >= 0.02),
                           reverse=True)
    return row


def settle(servers: list[Server], idle: float = 0.1, interval: float = 0.25,
           longest: float = 30) -> None:
    """Return once the servers' processes together use under ``idle`` of a core: a server
    still working through requests queued when wrk stopped (a large batch at each of 16
    connections takes seconds) would otherwise run into the next server's measurement."""
    def used() -> float:
        return sum(sum(server_cpu(server.process.pid).values()) for server in servers)

    deadline, last = time.monotonic() + longest, used()
    while time.monotonic() < deadline:
        time.sleep(interval)
        now = used()
        if now - last < idle * interval:
            return
        last = now


def memory_mb(root: int) -> list[tuple[float, float]]:
    """(RSS MB, PSS MB) of each process of a server, its root first."""
    rows = []
    for pid in sorted(server_cpu(root), key=lambda pid: pid != root):
        try:
            fields = dict(line.split(":", 1) for line in
                          Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue
        kb = {k: int(v.split()[0]) for k, v in fields.items() if k in ("Rss", "Pss")}
        rows.append((kb["Rss"] / 1024, kb["Pss"] / 1024))
    return rows


# --- the run --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kserve-python", help="python of a venv with kserve (see above)")
    parser.add_argument("--mlserver-python", help="python of a venv with mlserver (see above)")
    parser.add_argument("--baseline-tree", type=Path,
                        help="another checkout of this repository (e.g. `git worktree add DIR "
                             "main`) served the same way, for a before/after table")
    parser.add_argument("--model", type=Path, default=REPO / "model.npz")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--connections", type=lambda s: [int(x) for x in s.split(",")],
                        default=[16, 64], help="keep-alive connections; the first is used for "
                        "every case, the others for V2 JSON 1 image (default 16,64)")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")],
                        default=[1, 16, 256, 1024], help="images per V2 request")
    parser.add_argument("--json-batch-limit", type=int, default=16,
                        help="largest batch also sent as JSON (the rest binary only)")
    parser.add_argument("--overload-connections", type=int, default=256,
                        help="connections of the overload cases (0: none)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"no model file {args.model}: pass --model, a file written by "
                     "`python -m trainer`")
    if args.baseline_tree and not (args.baseline_tree / "gunicorn.conf.py").is_file():
        parser.error(f"{args.baseline_tree} is not a checkout of this repository")
    with tempfile.TemporaryDirectory(prefix="digitgrad-bench-peers-") as tmp:
        return run(args, Path(tmp))


def run(args: argparse.Namespace, workdir: Path) -> int:
    model = args.model.resolve()
    cases = make_cases(workdir, args)
    script = workdir / "bench.lua"
    script.write_text(WRK_SCRIPT)
    load_before = os.getloadavg()[0]
    servers: list[Server] = []
    try:
        servers.append(start_ours("ours", REPO, model, args.workers, workdir))
        if args.baseline_tree:
            servers.append(start_ours("baseline", args.baseline_tree.resolve(), model,
                                      args.workers, workdir))
        if args.kserve_python:
            servers.append(start_kserve(args.kserve_python, model, args.workers, workdir))
        if args.mlserver_python:
            servers.append(start_mlserver(args.mlserver_python, model, args.workers, workdir))
        probe(servers, cases)
        results: dict[tuple[str, str], list[dict]] = {}
        for round_ in range(args.rounds + 1):  # round 0: a one-second warm-up of each
            for case in cases:
                for server in servers:
                    if not measured(server, case):
                        continue
                    if round_ == 0:
                        run_wrk(server.url(case.path), case, case.connections, 1, script)
                    else:
                        row = measure_once(server, case, args, script)
                        results.setdefault((case.name, server.name), []).append(row)
                    settle(servers)
        memory = {server.name: memory_mb(server.process.pid) for server in servers}
    finally:
        for server in servers:
            stop(server.process, timeout=60)
    print(f"model: {model}; {args.workers} workers each; wrk, 1 thread; {args.rounds} rounds x "
          f"{args.duration:g} s per case and server, interleaved, none discarded or repeated; "
          f"{os.cpu_count()} CPUs shared by the servers and wrk; load average {load_before:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after")
    report(cases, servers, results, memory)
    return 0


def report(cases: list[Case], servers: list[Server], results: dict, memory: dict) -> None:
    """The table (medians of rounds), each round's req/s and CPU spread, ratios, memory."""
    print("\n| request | server | req/s | req/s range | worst round vs median | p50 ms | "
          "p99 ms | images/s | CPU ms/req | 503 share | admitted p99 ms |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        for server in servers:
            if (case.ours_only and not server.ours):
                continue
            if case.name in server.refused:
                print(f"| {case.name} | {server.name} | refused: "
                      f"{server.refused[case.name]} |||||||||")
                continue
            rows = results[(case.name, server.name)]
            m = {k: statistics.median(r[k] for r in rows)
                 for k in ("rps", "p50", "p99", "images_s", "cpu_ms", "admitted_p99")}
            rps = [r["rps"] for r in rows]
            worst = max(abs(r / m["rps"] - 1) for r in rps) if m["rps"] else float("nan")
            shed = sum(r["refused"] for r in rows) / max(sum(r["requests"] for r in rows), 1)
            print(f"| {case.name} | {server.name} | {m['rps']:.0f} | {min(rps):.0f}-"
                  f"{max(rps):.0f} | {worst:.0%} | {m['p50']:.2f} | {m['p99']:.2f} | "
                  f"{m['images_s']:.0f} | {m['cpu_ms']:.3f} | {shed:.1%} | "
                  f"{m['admitted_p99']:.2f} |")
    print("\nEvery round (req/s; CPU shares of the busiest processes; socket errors):")
    for (case_name, server_name), rows in results.items():
        rounds = "; ".join(
            f"{r['rps']:.0f} ({'/'.join(f'{s:.0%}' for s in r['shares'][:3])}"
            + (f", {r['socket_errors']:.0f} socket errors" if r["socket_errors"] else "") + ")"
            for r in rows)
        print(f"  {case_name} | {server_name}: {rounds}")
    ours = servers[0].name
    print("\nours / each other server, req/s (median of the rounds' ratios; the rounds'); "
          "their CPU per request / ours:")
    for case in cases:
        for server in servers[1:]:
            a, b = results.get((case.name, ours)), results.get((case.name, server.name))
            if not a or not b:
                continue
            ratios = [x["rps"] / y["rps"] for x, y in zip(a, b) if y["rps"]]
            # CPU per request the other way round (higher: ours cheaper): steadier than req/s
            # on a machine shared with other work
            cpu = [y["cpu_ms"] / x["cpu_ms"] for x, y in zip(a, b) if x["cpu_ms"]]
            if ratios:
                print(f"  {case.name}, ours / {server.name}: {statistics.median(ratios):.2f} "
                      f"({', '.join(f'{r:.2f}' for r in ratios)}); by CPU per request "
                      f"{statistics.median(cpu):.2f} ({', '.join(f'{r:.2f}' for r in cpu)})")
    print("\nmemory per process, MB (RSS/PSS; the root process first), after the run:")
    for name, rows in memory.items():
        print(f"  {name}: " + ", ".join(f"{rss:.0f}/{pss:.0f}" for rss, pss in rows))


if __name__ == "__main__":
    sys.exit(main())
