"""What the answer says when a request breaks a limit that is not the body size, and the
headers every answer carries."""

from __future__ import annotations

import io

import pytest
from drawing import digit_png
from werkzeug.datastructures import FileStorage
from werkzeug.test import encode_multipart
from werkzeug.wrappers import Response


def post_form(client, path: str, fields: dict):
    """POST ``fields`` and a digit in "image" as multipart, the body built in memory (the
    test client would spool a big one to a temporary file it never closes)."""
    image = FileStorage(io.BytesIO(digit_png()), "digit.png", content_type="image/png")
    boundary, body = encode_multipart({**fields, "image": image})
    return client.post(path, data=body,
                       content_type=f"multipart/form-data; boundary={boundary}")


def error_of(response, status: int) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    return response.get_json()["error"]


@pytest.mark.parametrize("path", ["/predict", "/predict/number"])
def test_too_many_form_parts_says_so(client, path):
    error = error_of(post_form(client, path, {f"field{i}": "x" for i in range(1001)}), 413)
    assert error["code"] == "request_too_large"
    assert "more than 1000 parts" in error["message"], error


def test_too_large_text_field_says_so(client):
    error = error_of(post_form(client, "/predict", {"note": "x" * 600_000}), 413)
    assert "text field is larger than the limit of 500000 bytes" in error["message"], error


def test_too_large_body_still_names_the_body_limit(make_app):
    client = make_app(MAX_UPLOAD_BYTES=10_000).test_client()
    error = error_of(client.post("/predict", data=bytes(20_000), content_type="image/png"), 413)
    assert error["message"] == "The request body is larger than the limit of 10000 bytes."


class StalledBody(io.RawIOBase):
    """A request body that gives 4 bytes, then times out like a socket with a deadline."""

    def __init__(self):
        self.sent = False

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.sent:
            raise TimeoutError("timed out")
        self.sent = True
        buffer[:4] = b"\x89PNG"
        return 4


def test_a_body_read_that_times_out_is_408(app):
    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/predict", "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http", "CONTENT_TYPE": "image/png",
               "CONTENT_LENGTH": "100000", "wsgi.input": StalledBody(),
               "wsgi.errors": io.StringIO()}
    response = Response.from_app(app, environ)
    assert response.status_code == 408
    error = response.get_json()["error"]
    assert error["code"] == "request_timeout" and "send the request again" in error["message"]


def test_every_answer_refuses_sniffing_and_the_page_has_a_policy(client):
    for path in ["/", "/healthz", "/static/app.js", "/nowhere"]:
        with client.get(path) as response:
            assert response.headers["X-Content-Type-Options"] == "nosniff", path
    with client.get("/") as response:
        policy = response.headers["Content-Security-Policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy
    assert "'unsafe-inline'" not in policy
    assert "Content-Security-Policy" not in client.get("/healthz").headers
