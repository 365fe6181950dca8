"""gunicorn's access log, the same lines, without gunicorn's per-request atom dictionary.

For every request gunicorn builds a dictionary of every atom an ``access_log_format`` could
name (each request and response header, the whole WSGI environ) and copies it escaped, which
costs about as much as writing the line. Here the atoms are computed when the format asks for
them: the common ones directly, any other (a header, an environ variable) from gunicorn's own
dictionary, built once for that line. Used by gunicorn.conf.py as ``logger_class``.
"""

from __future__ import annotations

import os
import traceback
from collections.abc import Iterator, Mapping

from gunicorn import glogging


def _status(resp, environ, took) -> str:
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


#: The atoms computed without gunicorn's dictionary, as gunicorn computes them.
DIRECT = {
    "h": lambda resp, environ, took: environ.get("REMOTE_ADDR", "-"),
    "r": lambda resp, environ, took: (f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} "
                                      f"{environ['SERVER_PROTOCOL']}"),
    "s": _status,
    "m": lambda resp, environ, took: environ.get("REQUEST_METHOD"),
    "U": lambda resp, environ, took: environ.get("PATH_INFO"),
    "B": lambda resp, environ, took: getattr(resp, "sent", None),
    "M": lambda resp, environ, took: took.seconds * 1000 + int(took.microseconds / 1000),
    "D": lambda resp, environ, took: took.seconds * 1_000_000 + took.microseconds,
    "p": lambda resp, environ, took: f"<{os.getpid()}>",
}


class LazyAtoms(Mapping):
    """The atoms of one access-log line, each computed when the format names it."""

    def __init__(self, logger: glogging.Logger, resp, req, environ, took) -> None:
        self._logger, self._resp, self._req, self._environ, self._took = (
            logger, resp, req, environ, took)
        self._all: Mapping | None = None

    def __getitem__(self, key: str):
        compute = DIRECT.get(key)
        if compute is None:
            if self._all is None:  # gunicorn's own, escaped and case-insensitive
                self._all = self._logger.atoms_wrapper_class(self._logger.atoms(
                    self._resp, self._req, self._environ, self._took))
            return self._all[key]
        value = compute(self._resp, self._environ, self._took)
        return value.replace('"', '\\"') if isinstance(value, str) else value  # as SafeAtoms

    def __iter__(self) -> Iterator[str]:
        return iter(DIRECT)

    def __len__(self) -> int:
        return len(DIRECT)


class AccessLogger(glogging.Logger):
    """gunicorn's logger, whose access lines compute only the atoms they show."""

    def access(self, resp, req, environ, request_time) -> None:
        if not self.access_log_enabled:
            return
        try:
            self.access_log.info(self.cfg.access_log_format,
                                 LazyAtoms(self, resp, req, environ, request_time))
        except Exception:
            self.error(traceback.format_exc())
