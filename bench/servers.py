"""Server processes on loopback for the benchmarks and the tests (tests/serving.py).

gunicorn with the repo's gunicorn.conf.py (or another config) on a free port, ready once GET
/readyz answers 200, stopped at the end of a ``with`` block. A process that exits or never
becomes ready is a ``ServerError`` whose message holds its log.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GUNICORN_CONF = REPO / "gunicorn.conf.py"
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via $http_proxy


class ServerError(RuntimeError):
    """A server process exited, or did not become ready in time."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gunicorn_env(model: Path, metrics_dir: Path | None = None, **extra: str | None) -> dict:
    """This process's environment serving ``model``, with ``metrics_dir`` as the Prometheus
    multiprocess directory (none inherited) and ``extra`` on top (None unsets a name)."""
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    env["MODEL_PATH"] = str(model)
    if metrics_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}


def start_gunicorn(env: dict, log: Path, config: Path = GUNICORN_CONF,
                   tree: Path = REPO) -> subprocess.Popen:
    """``gunicorn --config CONFIG "server:create_app()"`` in ``tree`` (this repo, or another
    checkout of it, whose ``server`` then serves), output to ``log``."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "--config", str(config), "server:create_app()"],
            cwd=tree, env=env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(base: str, process: subprocess.Popen, log: Path, seconds: float = 60,
               path: str = "/readyz", name: str = "gunicorn") -> None:
    """Return once GET ``base + path`` answers 200; ServerError if the process exits first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{name} exited with {process.returncode}:\n{log.read_text()}")
        try:
            with OPENER.open(base + path, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet, or not ready (HTTPError is an OSError)
            pass
        time.sleep(0.1)
    raise ServerError(f"{name} not ready after {seconds:g} s:\n{log.read_text()}")


def stop(process: subprocess.Popen, graceful: bool = True, timeout: float = 30) -> None:
    """SIGTERM (a graceful shutdown) or SIGKILL, then wait; SIGKILL if SIGTERM takes too long."""
    if process.poll() is None:
        if graceful:
            process.terminate()
            try:
                process.wait(timeout=timeout)
                return
            except subprocess.TimeoutExpired:
                pass
        process.kill()
    process.wait(timeout=timeout)


@contextmanager
def ready(process: subprocess.Popen, base: str, log: Path, *, path: str = "/readyz",
          seconds: float = 60, name: str = "gunicorn",
          graceful: bool = True) -> Iterator[subprocess.Popen]:
    """``process`` (started, to answer on ``base``) once ready, until the block ends: stopped."""
    try:
        wait_ready(base, process, log, seconds, path, name)
        yield process
    finally:
        stop(process, graceful)


@contextmanager
def gunicorn_process(env: dict, log: Path, config: Path = GUNICORN_CONF,
                     graceful: bool = True) -> Iterator[tuple[str, subprocess.Popen]]:
    """gunicorn with ``env`` on a free loopback port (BIND set here), ready, until the block
    ends; yields (base URL, process)."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    process = start_gunicorn({**env, "BIND": f"127.0.0.1:{port}"}, log, config)
    with ready(process, base, log, graceful=graceful):
        yield base, process


def worker_pids(master: int) -> list[int]:
    """The pids of gunicorn's live workers (the master's children), in start order."""
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


def settled_rss(pid: int, seconds: float = 10) -> int:
    """A process's VmRSS once it stops moving (answers written, memory given back), or after
    ``seconds``."""
    previous = proc_status(pid)["VmRSS"]
    for _ in range(int(seconds / 0.2)):
        time.sleep(0.2)
        current = proc_status(pid)["VmRSS"]
        if current == previous:
            break
        previous = current
    return previous
