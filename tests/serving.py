"""Real gunicorn processes for the tests: the repo's gunicorn.conf.py on a free loopback port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_env(model: Path, metrics_dir: Path | None = None, **extra: str | None) -> dict:
    """The environment of a 2-worker, 2-thread gunicorn; an ``extra`` of None unsets that name."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env.update(MODEL_PATH=str(model), WEB_CONCURRENCY="2", GUNICORN_THREADS="2")
    env.update(extra)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    return {k: v for k, v in env.items() if v is not None}


def start_gunicorn(env: dict, log: Path,
                   config: Path = REPO / "gunicorn.conf.py") -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(config),
             "server:create_app()"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


def request(url: str, data=None, headers: dict | None = None):
    """(status, body bytes) of one HTTP request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with OPENER.open(req, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_ready(base: str, process: subprocess.Popen, log: Path, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"gunicorn exited with {process.returncode}:\n{log.read_text()}")
        try:
            if request(base + "/readyz")[0] == 200:
                return
        except OSError:
            pass
        time.sleep(0.1)
    pytest.fail(f"gunicorn not ready after {seconds} s:\n{log.read_text()}")


@contextmanager
def running_gunicorn(model: Path, log: Path, metrics_dir: Path | None = None,
                     **extra: str | None) -> Iterator[tuple[str, subprocess.Popen]]:
    """gunicorn serving ``model`` until the block ends (then killed); yields (base URL, process)."""
    port = free_port()
    process = start_gunicorn(gunicorn_env(model, metrics_dir, BIND=f"127.0.0.1:{port}", **extra),
                             log)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, process, log)
        yield base, process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)


def worker_pids(master: int) -> list[int]:
    """The pids of gunicorn's live workers: the master's children, in start order."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        state, parent = stat.rsplit(")", 1)[1].split()[:2]
        if int(parent) == master and state != "Z":
            children.append(int(entry.name))
    return sorted(children)


def proc_status(pid: int) -> dict[str, int]:
    """Memory figures of a process from /proc/PID/status, in bytes: VmRSS (resident now) and
    VmHWM (its peak resident size, the "high water mark")."""
    figures = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            figures[name] = int(value.split()[0]) * 1024  # reported in kB
    return figures
