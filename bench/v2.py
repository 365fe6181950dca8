"""Open Inference Protocol (V2) throughput: our gunicorn against KServe's model server, one run.

Starts on loopback our gunicorn (the repo's config) and KServe's own Python model server,
``ModelServer(workers=N)`` around a ``kserve.Model`` wrapping the same model file
(bench/kserve_model.py, run by --kserve-python: an interpreter with the ``kserve`` package, a
bench-only dependency). Both get N workers. wrk (one thread, C keep-alive connections) then
drives, round robin so that machine noise hits all alike:

* ours:   POST /v2/models/digitgrad/infer, JSON, one 28x28 image (MNIST's first test digit
          / 255 when $MNIST_DIR is set, else a drawn 7);
* KServe: the same bytes to the same path;
* ours:   POST /predict with that digit as a 28x28 PNG, for reference.

It prints req/s, p50/p99 latency and server CPU per request (medians over the rounds), the
ratio of our V2 req/s to KServe's (target >= 1.2), and each server's memory per process.

    python -m venv /tmp/kserve && /tmp/kserve/bin/pip install kserve flask pillow
    python -m bench.v2 --kserve-python /tmp/kserve/bin/python [--model model.npz]
                       [--workers 2] [--concurrency 16] [--duration 6] [--rounds 5]

(flask and pillow because bench.kserve_model imports our ``server.model``.)
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

from bench.loadgen import WRK_SCRIPT, measure_once, print_medians, round_ratios, run_wrk, small_png
from bench.servers import (
    OPENER,
    REPO,
    ServerError,
    free_port,
    gunicorn_env,
    gunicorn_process,
    ready,
)

INFER = "/v2/models/digitgrad/infer"


def infer_body(png: bytes) -> bytes:
    """The V2 JSON request for the digit in ``png``: pixels / 255, FP32 [1, 28, 28], an id."""
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("L"), np.float32) / 255
    return json.dumps({"id": "bench", "inputs": [{
        "name": "pixels", "datatype": "FP32", "shape": [1, 28, 28],
        "data": pixels.ravel().tolist()}]}).encode()


def start_kserve(python: str, model: Path, port: int, workers: int,
                 log: Path) -> subprocess.Popen:
    """``python -m bench.kserve_model`` (the repo on its path: ``python`` has no digitgrad)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO))
    with open(log, "wb") as out:
        return subprocess.Popen(
            [python, "-m", "bench.kserve_model", "--model", str(model),
             "--http_port", str(port), "--workers", str(workers)],
            cwd=log.parent, env=env, stdout=out, stderr=subprocess.STDOUT)


def post(url: str, body: bytes, content_type: str) -> dict:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type})
    with OPENER.open(request, timeout=10) as response:
        return json.loads(response.read())


def v2_digit(answer: dict) -> int:
    return next(o for o in answer["outputs"] if o["name"] == "digit")["data"][0]


def memory_mb(master_pid: int) -> list[tuple[str, float, float]]:
    """(role, RSS MB, PSS MB) of the master and each child (Linux /proc)."""
    rows = []
    for stat in sorted(Path("/proc").glob("[0-9]*/stat")):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            pid = int(stat.parent.name)
            if pid != master_pid and parent != master_pid:
                continue
            fields = dict(line.split(":", 1) for line in
                          (stat.parent / "smaps_rollup").read_text().splitlines()[1:])
        except (OSError, ValueError):
            continue  # exited, or not ours to read
        kb = {k: int(v.split()[0]) for k, v in fields.items() if k in ("Rss", "Pss")}
        role = "master" if pid == master_pid else "child"
        rows.append((role, kb["Rss"] / 1024, kb["Pss"] / 1024))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and measure, with every file in a temporary directory."""
    parser = argparse.ArgumentParser(prog="python -m bench.v2",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--kserve-python", required=True,
                        help="python of a virtual environment with `pip install kserve`")
    parser.add_argument("--model", type=Path, default=REPO / "model.npz")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--duration", type=float, default=6.0, help="seconds per measurement")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if shutil.which(args.kserve_python) is None:
        parser.error(f"--kserve-python {args.kserve_python}: no such interpreter; make one with "
                     "python -m venv VENV && VENV/bin/pip install kserve flask pillow")
    if not args.model.is_file():
        parser.error(f"no model file {args.model}: pass --model, a file written by "
                     "`python -m trainer`")
    with tempfile.TemporaryDirectory(prefix="digitgrad-bench-v2-") as tmp:
        try:
            return measure(args, Path(tmp))
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


def measure(args: argparse.Namespace, workdir: Path) -> int:
    """Start both servers, check they agree, run the rounds, print the table."""
    png = small_png()
    (workdir / "digit28.png").write_bytes(png)
    (workdir / "infer.json").write_bytes(infer_body(png))
    script = workdir / "post.lua"
    script.write_text(WRK_SCRIPT)
    print(f"model: {args.model}")

    load_before = os.getloadavg()[0]
    with contextlib.ExitStack() as stack:
        ours_base, ours = stack.enter_context(gunicorn_process(
            gunicorn_env(args.model, workdir / "prometheus", WEB_CONCURRENCY=str(args.workers)),
            workdir / "gunicorn.log"))
        kserve_port = free_port()
        kserve_base = f"http://127.0.0.1:{kserve_port}"
        log = workdir / "kserve.log"
        kserve = stack.enter_context(ready(
            start_kserve(args.kserve_python, args.model, kserve_port, args.workers, log),
            kserve_base, log, path="/v2/models/digitgrad/ready", seconds=120, name="KServe"))
        servers = {"ours": ours, "KServe": kserve}
        cases = [  # (name, server, URL, body file, Content-Type)
            ("ours V2 infer JSON", "ours", ours_base + INFER, workdir / "infer.json",
             "application/json"),
            ("KServe V2 infer JSON", "KServe", kserve_base + INFER, workdir / "infer.json",
             "application/json"),
            ("ours /predict 28x28 PNG", "ours", ours_base + "/predict",
             workdir / "digit28.png", "image/png"),
        ]
        results: dict[str, list[dict]] = {name: [] for name, *_ in cases}
        body = (workdir / "infer.json").read_bytes()
        digits = {name: v2_digit(post(cases[i][2], body, "application/json"))
                  for i, name in enumerate(servers)}
        if len(set(digits.values())) != 1:
            raise SystemExit(f"the servers disagree on the digit: {digits}")
        for _name, _server, url, body_file, content_type in cases:  # warm-up, all must be 200
            run_wrk(url, body_file, content_type, args.concurrency, 1, script)
        for _ in range(args.rounds):
            for name, server, url, body_file, content_type in cases:
                results[name].append(measure_once(run_wrk, servers[server].pid, url,
                                                  body_file, content_type, args, script))
        memory = {name: memory_mb(process.pid) for name, process in servers.items()}

    print(f"client: wrk, 1 thread, {args.concurrency} keep-alive connections, {args.rounds} "
          f"rounds x {args.duration:g} s per case, interleaved; {args.workers} workers each; "
          f"{os.cpu_count()} CPUs shared by servers and wrk; load average {load_before:.1f} "
          f"before, {os.getloadavg()[0]:.1f} after (other processes skew clock-time figures)")
    medians = print_medians(results)
    ours_v2, kserve_v2, predict = (medians[name] for name, *_ in cases)
    print(f"ours / KServe, V2 infer req/s: {round_ratios(results, cases[0][0], cases[1][0])} "
          f"(target >= 1.2; ratio of medians {ours_v2['rps'] / kserve_v2['rps']:.2f}); by "
          f"server CPU per request: {kserve_v2['cpu_ms'] / ours_v2['cpu_ms']:.2f}")
    print(f"ours, V2 infer / /predict req/s: {ours_v2['rps'] / predict['rps']:.2f}")
    for name, rows in memory.items():
        listed = ", ".join(f"{role} RSS {rss:.0f} PSS {pss:.0f}" for role, rss, pss in rows)
        print(f"memory MB, {name}: {listed}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
