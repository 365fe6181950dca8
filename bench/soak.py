"""Soak: the compose deployment under moderate load through its proxy for ten minutes.

Brings up compose.yaml with compose.host.yaml (its own project, free loopback ports; built
with BuildKit as the tests do), then C clients post a 28x28 PNG to the proxy's /predict, each
pausing P seconds between requests, for M minutes. Every S seconds it reads the resident memory
of each gunicorn worker of each replica (docker top). Per minute it prints requests, failures,
p50 and p99 latency and the workers' memory; at the end, each worker's growth from its first
minute to its last. Pass: no failed request, every worker within 10% of its first minute.
The deployment is removed afterwards.

    python -m bench.soak [--model model.npz] [--minutes 10] [--clients 8] [--pause 0.05]

Needs a Docker daemon, Debian's docker-compose (or `docker compose`) and the base image
(docker/stand-in-base.sh makes one where no registry can be reached).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
import uuid
from pathlib import Path

from bench.deployment import Deployment, Load, buildkit_client, percentile
from bench.loadgen import small_png

#: A worker whose memory grows more than this from its first minute fails the soak.
MAX_GROWTH = 0.10


def sample_memory(deployment: Deployment, every: float, stop: threading.Event,
                  samples: list[tuple[float, str, int, int]]) -> None:
    """Append (time, replica, worker pid, RSS KiB) every ``every`` seconds until ``stop``."""
    replicas = deployment.replicas
    while not stop.wait(every):
        now = time.monotonic()
        for replica in replicas:
            for pid, rss in deployment.worker_rss_kib(replica).items():
                samples.append((now, replica, pid, rss))


def report(answers, samples, started: float, minutes: int) -> bool:
    """Print the per-minute table and the memory growth; whether the soak passed."""
    print(f"{'minute':>6} {'requests':>9} {'failed':>7} {'p50 ms':>7} {'p99 ms':>7} "
          f"{'worker RSS MiB (each)':>30}")
    first_rss: dict[tuple[str, int], float] = {}
    last_rss: dict[tuple[str, int], float] = {}
    for minute in range(minutes):
        lo, hi = started + 60 * minute, started + 60 * (minute + 1)
        these = [a for a in answers if lo <= a.started < hi]
        ok = [a.seconds * 1000 for a in these if a.status == 200]
        rss: dict[tuple[str, int], list[int]] = {}
        for when, replica, pid, kib in samples:
            if lo <= when < hi:
                rss.setdefault((replica, pid), []).append(kib)
        means = {worker: statistics.mean(values) / 1024 for worker, values in rss.items()}
        for worker, mib in means.items():
            first_rss.setdefault(worker, mib)
            last_rss[worker] = mib
        print(f"{minute + 1:>6} {len(these):>9} {len(these) - len(ok):>7} "
              f"{percentile(ok, 50):>7.1f} {percentile(ok, 99):>7.1f} "
              f"{' '.join(f'{m:.1f}' for _, m in sorted(means.items())):>30}")
    failures = sum(a.status != 200 for a in answers)
    growth = {w: last_rss[w] / first_rss[w] - 1 for w in first_rss}
    print(f"\n{len(answers)} requests, {failures} failed; workers "
          f"{sorted(f'{r}/{pid}' for r, pid in first_rss)}")
    print("memory, last minute against the first: " +
          ", ".join(f"{r}/{pid} {g:+.1%}" for (r, pid), g in sorted(growth.items())))
    flat = bool(growth) and all(abs(g) <= MAX_GROWTH for g in growth.values())
    print(f"pass: {failures == 0 and flat} (no failures: {failures == 0}; every worker within "
          f"{MAX_GROWTH:.0%}: {flat})")
    return failures == 0 and flat


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("model.npz"),
                        help="the model the replicas serve (default: %(default)s)")
    parser.add_argument("--minutes", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--pause", type=float, default=0.05,
                        help="seconds each client waits between requests (default: %(default)s)")
    parser.add_argument("--sample", type=float, default=10,
                        help="seconds between memory samples (default: %(default)s)")
    args = parser.parse_args(argv)
    if not args.model.is_file():
        parser.error(f"{args.model}: no such file; train one (python -m trainer --out "
                     f"{args.model}) or pass --model")
    docker = buildkit_client()
    if docker is None:
        parser.error("no docker client that builds with BuildKit on PATH")
    deployment = Deployment(docker, args.model.resolve(),
                            project=f"digitgrad-soak-{uuid.uuid4().hex[:8]}")
    print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; bringing up "
          f"{deployment.project} ...", flush=True)
    try:
        deployment.up()
        print(f"{args.clients} clients, {args.pause} s apart, {args.minutes} min through "
              f"{deployment.proxy}", flush=True)
        samples: list[tuple[float, str, int, int]] = []
        stop = threading.Event()
        sampler = threading.Thread(target=sample_memory,
                                   args=(deployment, args.sample, stop, samples), daemon=True)
        started = time.monotonic()
        sampler.start()
        with Load(deployment.proxy, small_png(), args.clients, args.pause,
                  prefix="soak") as load:
            time.sleep(60 * args.minutes)
        stop.set()
        sampler.join()
        print(f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")
        passed = report(load.answers, samples, started, args.minutes)
    finally:
        deployment.down()
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
