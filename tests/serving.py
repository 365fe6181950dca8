"""Real gunicorn processes for the tests: bench.servers with the tests' defaults (2 workers of
2 threads, the repo's gunicorn.conf.py on a free loopback port, killed at the end)."""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from bench import servers


def gunicorn_env(model: Path, metrics_dir: Path | None = None, **extra: str | None) -> dict:
    """The environment of a 2-worker, 2-thread gunicorn; an ``extra`` of None unsets that name."""
    return servers.gunicorn_env(model, metrics_dir,
                                **{"WEB_CONCURRENCY": "2", "GUNICORN_THREADS": "2", **extra})


def multipart(field: str, files: list[bytes]) -> tuple[bytes, str]:
    """(body, Content-Type) of a multipart upload of ``files`` as field ``field``, built in
    memory (the test client would spool a big one to disk)."""
    boundary = "digitgrad-test-boundary"
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
             f'filename="{i}.png"\r\nContent-Type: image/png\r\n\r\n'.encode() + data + b"\r\n"
             for i, data in enumerate(files)]
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}")


def request(url: str, data=None, headers: dict | None = None, timeout: float = 10):
    """(status, body bytes) of one HTTP request; HTTP errors are answers too."""
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with servers.OPENER.open(req, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@contextmanager
def running_gunicorn(model: Path, log: Path, metrics_dir: Path | None = None,
                     **extra: str | None) -> Iterator[tuple[str, subprocess.Popen]]:
    """gunicorn serving ``model`` until the block ends (then killed); yields (base URL, process)."""
    with servers.gunicorn_process(gunicorn_env(model, metrics_dir, **extra), log,
                                  graceful=False) as (base, process):
        yield base, process
