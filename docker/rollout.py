#!/usr/bin/env python3
"""Replace the digitgrad replicas of the compose deployment one at a time, so that a new model
(or image) goes live without a failed request: each replica is recreated, and the next one goes
only once this one is healthy and back in the proxy's rotation (HAProxy retries what the
replica going down leaves unanswered). A replica that never gets healthy (a model that cannot
be served) stops the rollout there, with the others still serving the old model.

    MODEL_FILE=new.npz python3 docker/rollout.py                     # compose.yaml (+ override)
    python3 docker/rollout.py -f compose.yaml -f compose.host.yaml    # on the host's network

The files, project and settings come as for `docker compose` itself: -f options (the same
ones `up` was given) and the environment (MODEL_FILE, COMPOSE_PROJECT_NAME, PROXY_STATS_PORT).
Uses `docker compose`, or Debian's `docker-compose` where the client has no compose plugin.
Python's standard library only: it runs on the host, outside the project's venv.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import subprocess
import sys
import time
import urllib.request

#: Seconds a replica may take from recreation to the proxy's rotation.
TIMEOUT = 120
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def compose_command() -> list[str]:
    """`docker compose` when the client has the plugin, else `docker-compose`."""
    plugin = subprocess.run(["docker", "compose", "version"], capture_output=True)
    return ["docker", "compose"] if plugin.returncode == 0 else ["docker-compose"]


def run(*args: str) -> str:
    """Run a command; its stdout, or exit with its stderr."""
    result = subprocess.run(args, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"rollout: {' '.join(args)} failed:\n{result.stderr.strip()}")
    return result.stdout


def proxy_status(stats_url: str) -> dict[str, str]:
    """HAProxy's status of each server of the digitgrad backend ("UP", "DOWN", ...)."""
    with OPENER.open(stats_url, timeout=5) as response:
        rows = csv.DictReader(io.StringIO(response.read().decode().lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows if row["pxname"] == "digitgrad"}


def container_state(container: str) -> dict:
    return json.loads(run("docker", "inspect", "--format", "{{json .State}}", container))


def wait_in_rotation(compose: list[str], service: str, stats_url: str) -> None:
    """Until the service's new container is healthy and HAProxy has it UP; exit if it fails."""
    container = run(*compose, "ps", "-q", service).strip()
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        state = container_state(container)
        if state["Restarting"] or not state["Running"] or \
                state.get("Health", {}).get("Status") == "unhealthy":
            logs = subprocess.run(["docker", "logs", "--tail", "5", container],
                                  capture_output=True, text=True)
            sys.exit(f"rollout: {service} did not start; stopped here, the other replicas "
                     f"still serve the old model. Its last lines:\n{logs.stdout}{logs.stderr}")
        if state.get("Health", {}).get("Status") == "healthy":
            try:
                if proxy_status(stats_url).get(service) == "UP":
                    return
            except OSError:
                pass  # the proxy is restarting too: ask again
        time.sleep(0.5)
    sys.exit(f"rollout: {service} not back in the proxy's rotation after {TIMEOUT} s "
             f"(stats: {stats_url})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 docker/rollout.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-f", "--file", action="append", default=[],
                        help="a compose file, as given to `docker compose up` (repeatable)")
    port = os.environ.get("PROXY_STATS_PORT", "8404")
    parser.add_argument("--stats", default=f"http://127.0.0.1:{port}/stats;csv",
                        help="HAProxy's stats as CSV (default: %(default)s)")
    args = parser.parse_args(argv)
    compose = compose_command() + [arg for name in args.file for arg in ("-f", name)]
    services = sorted(s for s in run(*compose, "config", "--services").split()
                      if s.startswith("digitgrad"))
    for service in services:
        started = time.monotonic()
        run(*compose, "up", "--detach", "--no-deps", "--force-recreate", service)
        wait_in_rotation(compose, service, args.stats)
        print(f"{service}: recreated, back in the proxy's rotation after "
              f"{time.monotonic() - started:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
