"""server/access_log.py writes exactly the lines gunicorn's own logger writes."""

from __future__ import annotations

import datetime
import logging
import runpy

import pytest
from gunicorn import glogging
from gunicorn.config import Config

from bench.servers import REPO
from server.access_log import AccessLogger


class Response:
    status = "200 OK"
    sent = 312
    headers = [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff")]


class Request:
    headers = [("HOST", "127.0.0.1"), ("USER-AGENT", 'curl "8"'), ("CONTENT-LENGTH", "15")]


ENVIRON = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "RAW_URI": '/v2/"x"/infer',
           "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/v2/x/infer", "QUERY_STRING": "",
           "HTTP_USER_AGENT": 'curl "8"', "wsgi.version": (1, 0)}
REPO_FORMAT = runpy.run_path(str(REPO / "gunicorn.conf.py"))["access_log_format"]


def line(logger_class, log_format: str) -> str:
    cfg = Config()
    cfg.set("accesslog", "-")
    cfg.set("access_log_format", log_format)
    logger = logger_class(cfg)
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger.access_log.addHandler(handler)
    try:
        logger.access(Response, Request, ENVIRON, datetime.timedelta(seconds=1, microseconds=2345))
    finally:
        logger.access_log.removeHandler(handler)
    return records[0].getMessage()


@pytest.mark.parametrize("log_format", [
    REPO_FORMAT,
    '%(h)s %(m)s %(U)s %(D)s %(s)s "%({user-agent}i)s" %({content-type}o)s %(H)s %(b)s',
])
def test_the_lines_are_gunicorns(log_format):
    ours = line(AccessLogger, log_format)
    assert ours == line(glogging.Logger, log_format)
    assert '\\"' in ours  # quotes in the request escaped, as gunicorn does
