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
seconds apart), p99 < 50 ms at 16. Every run is reported, including one whose connections
all landed on one worker (it counts the runs in which one worker did most of the work).

``--floor`` adds a second gunicorn whose /predict skips decoding and the model
(bench/floor_gunicorn.conf.py): its ratio to /healthz is the most the first ratio can reach
on this stack, whatever the pipeline and the model cost.

    python -m bench.serve [--model model.npz] [--floor] [--concurrency 16] [--duration 8]
                          [--rounds 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from bench.loadgen import (
    WRK_SCRIPT,
    measure_once,
    photo_jpeg,
    print_medians,
    round_ratios,
    run_python,
    run_wrk,
    small_png,
)
from bench.servers import GUNICORN_CONF, REPO, ServerError, gunicorn_env, gunicorn_process
from models import DeepNetwork, preprocessing_config, save

COMPARE = "POST /predict PNG, compare"
FLOOR = "POST /predict PNG, no work"
FLOOR_CONFIG = REPO / "bench" / "floor_gunicorn.conf.py"


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments and measure, with every file in a temporary directory."""
    parser = argparse.ArgumentParser(prog="python -m bench.serve",
                                     description=__doc__.split("\n\n")[0])
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
    parser.add_argument("--config", type=Path, default=GUNICORN_CONF,
                        help="gunicorn config file, to compare a variant with the repo's")
    parser.add_argument("--client", choices=["wrk", "python"],
                        default="wrk" if shutil.which("wrk") else "python")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="digitgrad-bench-") as tmp:
        try:
            return measure(args, Path(tmp))
        except ServerError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1


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
    with contextlib.ExitStack() as stack:
        # (base URL, process) of each gunicorn; the first is the one measured
        servers: list[tuple[str, subprocess.Popen]] = []

        def start(model: Path, config: Path, **env: str) -> None:
            """gunicorn serving ``model``; its log and metrics in a directory of its own."""
            directory = workdir / f"server{len(servers)}" if servers else workdir
            directory.mkdir(exist_ok=True)
            if args.workers:
                env["WEB_CONCURRENCY"] = str(args.workers)
            servers.append(stack.enter_context(gunicorn_process(
                gunicorn_env(model, directory / "prometheus", **env), directory / "gunicorn.log",
                config)))

        def add_server(name: str, model: Path, config: Path, **env: str) -> None:
            """Another gunicorn, whose 28x28 PNG /predict is case ``name`` of the same rounds."""
            start(model, config, **env)
            cases.append((name, len(servers) - 1, "/predict", png, "image/png"))

        start(model, args.config)
        if args.compare_model is not None:
            print(f"compare model: {args.compare_model}")
            add_server(COMPARE, args.compare_model, args.config)
        if args.floor:
            add_server(FLOOR, model, FLOOR_CONFIG, BENCH_BASE_CONFIG=str(args.config))
        results: dict[str, list[dict]] = {name: [] for name, *_ in cases}
        for round_ in range(args.rounds + 1):  # round 0: warm-up, and each must answer 200
            for name, index, path, body, content_type in cases:
                base, process = servers[index]
                if round_ == 0:
                    run(base + path, body, content_type, args.concurrency, 1, script)
                else:
                    results[name].append(measure_once(run, process.pid, base + path, body,
                                                      content_type, args, script))

    workers = args.workers or os.environ.get("WEB_CONCURRENCY") or "config default"
    print(f"client: {args.client}, {args.concurrency} concurrent keep-alive connections, "
          f"{args.rounds} rounds x {args.duration:g} s per request, gunicorn workers: {workers}, "
          f"{os.cpu_count()} CPUs, load average {load_before:.1f} before and "
          f"{os.getloadavg()[0]:.1f} after (other processes skew clock-time figures)")
    medians = print_medians(results)
    lopsided = sum(r["busiest_share"] > 0.8 for rows in results.values() for r in rows)
    print(f"runs in which one worker did more than 80% of the work (reported like the others, "
          f"never repeated): {lopsided}")
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
