"""The compose deployment driven for the tests (tests/test_compose.py) and bench.soak: one
compose project (compose.yaml with compose.host.yaml, or with compose.override.yaml) on free
loopback ports, its parts reached directly, and HTTP load through its proxy that records every
request's outcome (failures included, unlike bench.loadgen's throughput runs)."""

from __future__ import annotations

import csv
import functools
import http.client
import io
import itertools
import json
import math
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

from bench.loadgen import upload
from bench.servers import OPENER, free_port

REPO = Path(__file__).resolve().parents[1]
HOST_NETWORK = ("compose.yaml", "compose.host.yaml")
BRIDGE_NETWORK = ("compose.yaml", "compose.override.yaml")
#: The ports compose.host.yaml (and compose.override.yaml, the first three) read.
PORTS = ("PROXY_PORT", "PROXY_STATS_PORT", "PROMETHEUS_PORT", "DIGITGRAD1_PORT",
         "DIGITGRAD2_PORT")


def buildkit_client() -> str | None:
    """The first `docker` on PATH that builds with BuildKit: one with the buildx plugin, or a
    client older than 23 (DOCKER_BUILDKIT=1 selects the engine's own BuildKit). A newer client
    without buildx falls back to the legacy builder, which cannot build the Dockerfile."""
    for directory in dict.fromkeys(os.environ.get("PATH", "").split(os.pathsep)):
        client = os.path.join(directory, "docker")
        if not (directory and os.access(client, os.X_OK)):
            continue
        if subprocess.run([client, "buildx", "version"], capture_output=True,
                          timeout=30).returncode == 0:
            return client
        version = subprocess.run([client, "version", "--format", "{{.Client.Version}}"],
                                 capture_output=True, text=True, timeout=30).stdout
        major = re.match(r"\d+", version)
        if major and int(major.group()) < 23:
            return client
    return None


def compose_command(docker: str) -> list[str]:
    """`docker compose` when the client has the plugin, else Debian's `docker-compose`."""
    plugin = subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30)
    return [docker, "compose"] if plugin.returncode == 0 else ["docker-compose"]


def get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """(status, body) of a GET; HTTP errors are answers too."""
    try:
        with OPENER.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


class Deployment:
    """One compose project of the repository's compose files, named and ported apart from any
    other on this daemon. ``docker`` is the client that builds with BuildKit: first on PATH for
    compose's builds (COMPOSE_DOCKER_CLI_BUILD=1 DOCKER_BUILDKIT=1, as compose.yaml says)."""

    def __init__(self, docker: str, model: Path, files: tuple[str, ...] = HOST_NETWORK,
                 project: str | None = None):
        self.docker = docker
        self.files = files
        self.project = project or f"digitgrad-test-{uuid.uuid4().hex[:10]}"
        self.ports = {name: free_port() for name in PORTS}
        self.env = {
            **os.environ, **{name: str(port) for name, port in self.ports.items()},
            "MODEL_FILE": str(model), "COMPOSE_PROJECT_NAME": self.project,
            "COMPOSE_DOCKER_CLI_BUILD": "1", "DOCKER_BUILDKIT": "1",
            "PATH": os.pathsep.join([str(Path(docker).parent), os.environ.get("PATH", "")]),
        }
        self.command = compose_command(docker) + [
            arg for name in files for arg in ("--file", str(REPO / name))]
        self.proxy = f"http://127.0.0.1:{self.ports['PROXY_PORT']}"
        self.stats = f"http://127.0.0.1:{self.ports['PROXY_STATS_PORT']}"
        self.prometheus = f"http://127.0.0.1:{self.ports['PROMETHEUS_PORT']}"

    def compose(self, *args: str, timeout: float = 300, check: bool = True,
                **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run([*self.command, *args], env={**self.env, **env}, cwd=REPO,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(self.command[:2])} {' '.join(args)} exited "
                               f"{result.returncode}:\n{result.stdout[-3000:]}"
                               f"{result.stderr[-5000:]}")
        return result

    def up(self) -> None:
        """Build what is missing, start everything, wait until the proxy has every replica UP."""
        self.compose("up", "--detach", timeout=1800)
        self.wait(lambda: set(self.proxy_status().values()) == {"UP"}, "every replica UP")

    def down(self) -> None:
        """Remove the containers, the Prometheus volume and the images built for the project
        (the build cache keeps their layers for the next run)."""
        self.compose("down", "--volumes", "--rmi", "local", "--timeout", "5", check=False)

    @functools.cached_property
    def replicas(self) -> list[str]:
        """The replicas' service names (digitgrad1, digitgrad2), as compose reads the files."""
        services = self.compose("config", "--services").stdout.split()
        return sorted(s for s in services if s.startswith("digitgrad"))

    def replica_url(self, service: str) -> str:
        """A replica on the host's network (HOST_NETWORK only), e.g. for its /metrics."""
        return f"http://127.0.0.1:{self.ports[service.upper() + '_PORT']}"

    def container(self, service: str) -> str:
        """The id of the service's container, found by the labels compose gives it (docker's
        own client: quicker than asking compose, which matters when polling)."""
        return self._docker("ps", "--all", "--quiet",
                            "--filter", f"label=com.docker.compose.project={self.project}",
                            "--filter", f"label=com.docker.compose.service={service}").strip()

    def logs(self, service: str, since: float | None = None) -> str:
        """The service's log (stdout and stderr), from ``since`` (a time.time()) if given."""
        after = [] if since is None else ["--since", f"{since:.3f}"]
        result = subprocess.run([self.docker, "logs", *after, self.container(service)],
                                capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr

    def _docker(self, *args: str) -> str:
        result = subprocess.run([self.docker, *args], capture_output=True, text=True,
                                timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def proxy_status(self) -> dict[str, str]:
        """HAProxy's status of each replica ("UP", "DOWN", ...); {} while it cannot answer."""
        try:
            status, body = get(self.stats + "/stats;csv", timeout=5)
        except OSError:
            return {}
        if status != 200:
            return {}
        rows = csv.DictReader(io.StringIO(body.decode().lstrip("# ")))
        return {row["svname"]: row["status"] for row in rows
                if row["pxname"] == "digitgrad" and row["svname"] not in ("FRONTEND", "BACKEND")}

    def query(self, promql: str) -> list[dict]:
        """An instant query through Prometheus' HTTP API: its result vector."""
        url = f"{self.prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        status, body = get(url)
        answer = json.loads(body)
        if status != 200 or answer["status"] != "success":
            raise RuntimeError(f"Prometheus answered {status}: {body[:500]!r}")
        return answer["data"]["result"]

    def worker_rss_kib(self, service: str) -> dict[int, int]:
        """Resident memory (KiB) of each gunicorn worker of a replica, by host pid."""
        rows = [line.split(None, 3) for line in
                self._docker("top", self.container(service), "-o", "pid,ppid,rss,args")
                .splitlines()[1:]]
        pids = {int(row[0]) for row in rows}
        return {int(pid): int(rss) for pid, ppid, rss, args in rows
                if int(ppid) in pids and "gunicorn" in args}

    def rollout(self, **env: str) -> subprocess.CompletedProcess:
        """docker/rollout.py, as an operator runs it, with the same compose files."""
        args = [arg for name in self.files for arg in ("-f", str(REPO / name))]
        result = subprocess.run([sys.executable, str(REPO / "docker" / "rollout.py"), *args],
                                env={**self.env, **env}, cwd=REPO, capture_output=True,
                                text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"docker/rollout.py failed:\n{result.stdout}{result.stderr}")
        return result

    @staticmethod
    def wait(done, what: str, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while not done():
            if time.monotonic() > deadline:
                raise TimeoutError(f"not {what} after {seconds} s")
            time.sleep(0.25)


# --- load ---------------------------------------------------------------------------------------

@dataclass
class Answer:
    """One request of the load: when it started (time.monotonic()), how long it took, its
    status (0: no HTTP answer at all), the id it was sent with and the id and model it got."""

    started: float
    seconds: float
    status: int
    request_id: str
    echoed_id: str | None = None
    model: str | None = None


class Load:
    """``clients`` threads, each on its own keep-alive connection, posting ``png`` to
    ``url``/predict back to back (``pause`` seconds apart) until the block ends. Each request
    carries its own X-Request-ID (``<prefix>-<client>-<n>``). ``answers`` grows as they come."""

    def __init__(self, url: str, png: bytes, clients: int = 16, pause: float = 0.0,
                 prefix: str = "load"):
        self.host, port = url.removeprefix("http://").split(":")
        self.port = int(port)
        self.body, self.content_type = upload(png)
        self.pause = pause
        self.prefix = prefix
        self.answers: list[Answer] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._client, args=(n,), daemon=True)
                         for n in range(clients)]

    def __enter__(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=60)

    def _client(self, client: int) -> None:
        connection = None
        for n in itertools.count():
            if self._stop.is_set():
                break
            request_id = f"{self.prefix}-{client}-{n}"
            started = time.monotonic()
            answer = Answer(started, 0.0, 0, request_id)
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
                connection.request("POST", "/predict", self.body, {
                    "Content-Type": self.content_type, "X-Request-ID": request_id})
                response = connection.getresponse()
                raw = response.read()
                answer.status = response.status
                answer.echoed_id = response.getheader("X-Request-ID")
                if response.status == 200:
                    answer.model = json.loads(raw)["model"]
            except (OSError, http.client.HTTPException):
                if connection is not None:
                    connection.close()
                connection = None
            answer.seconds = time.monotonic() - started
            self.answers.append(answer)
            if self.pause:
                self._stop.wait(self.pause)
        if connection is not None:
            connection.close()


def failed(answers: list[Answer]) -> list[Answer]:
    """The answers that were not a 200 (no answer at all included)."""
    return [a for a in answers if a.status != 200]


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank q-th percentile (q in 0-100); nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


class HeaderTrickle:
    """``connections`` clients that send a request line and then one header byte every
    ``interval`` seconds, never finishing their headers; one a proxy drops is opened again.
    One thread for all of them."""

    def __init__(self, url: str, connections: int = 64, interval: float = 1.0):
        self.address = url.removeprefix("http://").split(":")
        self.connections = connections
        self.interval = interval
        self.opened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HeaderTrickle:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _open(self) -> socket.socket | None:
        try:
            sock = socket.create_connection((self.address[0], int(self.address[1])), timeout=5)
            sock.sendall(b"POST /predict HTTP/1.1\r\nHost: digitgrad\r\nX-Slow: ")
        except OSError:
            return None
        sock.setblocking(False)
        self.opened += 1
        return sock

    @staticmethod
    def _alive(sock: socket.socket) -> bool:
        """Whether the peer has neither answered (a 408) nor closed the connection."""
        try:
            sock.recv(4096)  # an answer, or b"" for a closed connection: done either way
        except BlockingIOError:
            return True
        except OSError:
            pass
        return False

    def _run(self) -> None:
        sockets: list[socket.socket] = []
        while not self._stop.is_set():
            for sock in sockets:
                if not self._alive(sock):
                    sock.close()
            sockets = [s for s in sockets if s.fileno() != -1]
            while len(sockets) < self.connections and not self._stop.is_set():
                sock = self._open()
                if sock is None:
                    break
                sockets.append(sock)
            for sock in sockets:
                try:
                    sock.send(b"a")
                except OSError:
                    sock.close()
            self._stop.wait(self.interval)
        for sock in sockets:
            sock.close()
