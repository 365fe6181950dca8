"""Container health probe: exit 0 when the service answers 200 on PATH (default /readyz), else 1.

Run by the image's HEALTHCHECK as `python /app/healthcheck.py /readyz`: python:slim has no curl,
and this needs only the standard library. It finds the service the way gunicorn.conf.py binds it:
the first address in BIND when set (host:port, [v6]:port or unix:/path), else PORT (default 8000),
and always asks on loopback, since 0.0.0.0 and :: are not addresses one can connect to.
http.client rather than urllib: urllib would send the request to $http_proxy if one is set.
"""

from __future__ import annotations

import http.client
import os
import socket
import sys
from collections.abc import Mapping

TIMEOUT_S = 3.0  # below the HEALTHCHECK --timeout, so a hung service reads as unhealthy, not killed
DEFAULT_PORT = 8000
WILDCARDS = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1", "*": "127.0.0.1"}


class UnixHTTPConnection(http.client.HTTPConnection):
    """HTTP over a unix socket, for BIND=unix:/path."""

    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def target(environ: Mapping[str, str]) -> tuple[str, str | int]:
    """("unix", path) or (host, port) to probe, from BIND else PORT."""
    bind = environ.get("BIND", "").replace(",", " ").split()
    if not bind:
        return "127.0.0.1", int(environ.get("PORT") or DEFAULT_PORT)
    address = bind[0]
    if address.startswith("unix:"):
        return "unix", address[len("unix:"):]
    if address.startswith("["):  # [v6]:port or [v6]
        host, _, rest = address[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif address.count(":") == 1:
        host, port = address.split(":")
    else:
        host, port = address, ""
    return WILDCARDS.get(host, host), int(port or DEFAULT_PORT)


def probe(path: str, environ: Mapping[str, str]) -> tuple[bool, str]:
    """GET path on the service: (healthy, one line saying what was seen)."""
    host, port = target(environ)
    if host == "unix":
        conn: http.client.HTTPConnection = UnixHTTPConnection(str(port), TIMEOUT_S)
        where = f"unix:{port}"
    else:
        conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
        where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        conn.request("GET", path, headers={"User-Agent": "digitgrad-healthcheck"})
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        return False, f"unhealthy: GET {path} on {where}: {exc.__class__.__name__}: {exc}"
    finally:
        conn.close()
    if status != 200:
        return False, f"unhealthy: GET {path} on {where} answered {status}"
    return True, f"healthy: GET {path} on {where} answered 200"


def main(argv: list[str] | None = None) -> int:
    """Probe, print one line (Docker keeps it in `docker inspect`), return 0 or 1."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) > 1:
        print("usage: healthcheck.py [PATH]", file=sys.stderr)
        return 1  # Docker reads any code but 0 and 1 as reserved: keep to 1
    try:
        healthy, line = probe(args[0] if args else "/readyz", os.environ)
    except ValueError as exc:  # a port that is not a number
        healthy, line = False, f"unhealthy: cannot read BIND/PORT from the environment: {exc}"
    print(line)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
