"""server/fastpath.py: V2 inference answered outside Flask, byte for byte as the Flask route
answers it, with the same metrics and log line; every refusal left to Flask."""

from __future__ import annotations

import json

import numpy as np
import pytest
from drawing import digit_png
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api import scrape
from test_v2 import (
    LIMITS,
    MAX_TENSOR_IMAGES,
    binary_request,
    image_request,
    pixels_request,
    strokes,
)
from werkzeug.test import Client

from server import fastpath
from server.inference import Busy
from server.state import get_serving

ID = {"X-Request-ID": "fast-path-1"}


@pytest.fixture
def app(make_app):
    """The app of the V2 tests, with their limits."""
    return make_app(**LIMITS)


@pytest.fixture
def flask_calls(app):
    """How many times the Flask route ran (0: the fast path answered)."""
    calls = []
    view = app.view_functions["v2.infer"]

    def counted(*args, **kwargs):
        calls.append(1)
        return view(*args, **kwargs)

    app.view_functions["v2.infer"] = counted
    return calls


def flask_only(app) -> Client:
    """A client of Flask's own WSGI app, without the middlewares in front of it."""
    return Client(lambda environ, start_response: Flask.wsgi_app(app, environ, start_response))


def both(app, path: str, data: bytes, headers: dict):
    """The answers of the app (fast path first) and of Flask alone to one request."""
    headers = {**headers, **ID}  # else each answer has its own new id
    fast = app.test_client().post(path, data=data, headers=headers)
    flask = flask_only(app).post(path, data=data, headers=headers)
    return fast, flask


def assert_same(fast, flask) -> None:
    assert fast.status_code == flask.status_code
    assert list(fast.headers.items()) == list(flask.headers.items())
    assert fast.get_data() == flask.get_data()


def json_body(query: dict) -> tuple[bytes, dict]:
    return json.dumps(query).encode(), {"Content-Type": "application/json"}


def requests(model_id: str) -> list[tuple[str, bytes, dict]]:
    """(path, body, headers) of answerable requests of every kind the route takes."""
    one, three = strokes(1), strokes(3)
    nested = pixels_request(one)
    nested["inputs"][0]["data"] = one.tolist()
    binary_in = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [3, 28, 28],
                             "parameters": {"binary_data_size": three.nbytes}}]}
    return [
        ("/v2/models/digitgrad/infer", *json_body(pixels_request(one))),
        ("/v2/models/digitgrad/infer", *json_body(nested)),
        ("/v2/models/digitgrad/infer", *json_body(pixels_request(three, id="req-7"))),
        ("/v2/models/digitgrad/infer", *json_body(pixels_request(
            one, outputs=[{"name": "digit"}, {"name": "probabilities",
                                              "parameters": {"binary_data": True}}]))),
        ("/v2/models/digitgrad/infer", *json_body(pixels_request(
            three, parameters={"binary_data_output": True}))),
        ("/v2/models/digitgrad/infer", *binary_request(binary_in, three.tobytes())),
        (f"/v2/models/digitgrad/versions/{model_id}/infer", *json_body(pixels_request(one))),
        ("/v2/models/digitgrad-image/infer", *image_request([digit_png(), digit_png(96, "JPEG")])),
    ]


def test_answers_are_the_flask_routes_byte_for_byte(app, flask_calls, capsys):
    model_id = get_serving(app).model.model_id
    for path, data, headers in requests(model_id):
        fast, flask = both(app, path, data, headers)
        assert fast.status_code == 200, fast.get_data()
        assert_same(fast, flask)
        assert fast.headers["X-Request-ID"] == ID["X-Request-ID"]
        assert fast.headers["X-Content-Type-Options"] == "nosniff"
    # Flask ran only for the flask_only client: the app's own answers came from the fast path
    assert len(flask_calls) == len(requests(model_id))
    # and the log lines are the same but for the time and the latency
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 2 * len(requests(model_id))
    for fast_line, flask_line in zip(lines[::2], lines[1::2]):
        for line in (fast_line, flask_line):
            del line["time"], line["latency_ms"]
        assert fast_line == flask_line


def test_a_fresh_request_id_when_the_client_sends_none_or_a_bad_one(app):
    for headers in ({}, {"X-Request-ID": "bad id with spaces"}):
        response = app.test_client().post("/v2/models/digitgrad/infer",
                                          json=pixels_request(strokes(1)), headers=headers)
        assert response.status_code == 200
        assert len(response.headers["X-Request-ID"]) == 32
        assert response.headers["X-Request-ID"] != headers.get("X-Request-ID")


def test_the_metrics_count_it_as_the_flask_route_would(app, flask_calls):
    client = app.test_client()
    before = scrape(client)
    for path, data, headers in requests(get_serving(app).model.model_id)[:2]:
        assert client.post(path, data=data, headers=headers).status_code == 200
    flask = flask_only(app)
    middle = scrape(client)
    for path, data, headers in requests(get_serving(app).model.model_id)[:2]:
        assert flask.post(path, data=data, headers=headers).status_code == 200
    after = scrape(client)
    assert len(flask_calls) == 2  # the flask_only client's two, not the fast path's

    def counted(samples):
        return {name: value for name, value in samples.items()
                if "/infer" in name and ("_count" in name or "_total" in name)
                or name.startswith("digitgrad_predictions_total")}

    fast_delta = {k: v - counted(before).get(k, 0) for k, v in counted(middle).items()}
    flask_delta = {k: v - counted(middle).get(k, 0) for k, v in counted(after).items()}
    assert fast_delta == flask_delta
    assert fast_delta['digitgrad_http_requests_total{method="POST",'
                      'route="/v2/models/<name>/infer",status="200"}'] == 2
    for stage in ("decode", "preprocess", "inference", "encode"):
        assert fast_delta['digitgrad_stage_duration_seconds_count{route="/v2/models/<name>/'
                          f'infer",stage="{stage}"}}'] == 2


REFUSED = [
    # the route's own refusals, each with its message: the body reached Flask whole
    ("/v2/models/digitgrad/infer", json.dumps({"inputs": []}).encode(), {}),
    ("/v2/models/nope/infer", json.dumps(pixels_request(strokes(1))).encode(), {}),
    ("/v2/models/digitgrad/versions/0000/infer", json.dumps(pixels_request(strokes(1))).encode(),
     {}),
    ("/v2/models/digitgrad/infer", json.dumps(pixels_request(strokes(1) * 2)).encode(), {}),
    ("/v2/models/digitgrad/infer", json.dumps(pixels_request(strokes(MAX_TENSOR_IMAGES + 1)))
     .encode(), {}),
    ("/v2/models/digitgrad/infer", b"{not json", {}),
    ("/v2/models/digitgrad/infer", b"", {}),
    ("/v2/models/digitgrad/infer", b"{}", {"Inference-Header-Content-Length": "99"}),
    ("/v2/models/digitgrad-image/infer", *image_request([b"not an image"])),
]


@pytest.mark.parametrize(("path", "data", "headers"), REFUSED)
def test_refusals_are_answered_by_flask(app, flask_calls, path, data, headers):
    fast, flask = both(app, path, data, headers)
    assert fast.status_code in (400, 404) and set(fast.get_json()) == {"error"}
    assert_same(fast, flask)
    assert len(flask_calls) == 2  # the fast path gave the request to Flask, body and all


def test_a_busy_worker_is_answered_by_flask(app, flask_calls, monkeypatch):
    monkeypatch.setattr(type(get_serving(app).inference.slots), "full", lambda self: True)
    response = app.test_client().post("/v2/models/digitgrad/infer",
                                      json=pixels_request(strokes(1)))
    assert response.status_code == 503 and response.headers["Retry-After"]
    assert flask_calls == []  # shed before the route, as before: by Flask's shed_early
    monkeypatch.undo()

    def busy(*args, **kwargs):
        raise Busy()

    monkeypatch.setattr(get_serving(app).inference, "predict_pixels", busy)
    response = app.test_client().post("/v2/models/digitgrad/infer",
                                      json=pixels_request(strokes(1)))
    assert response.status_code == 503 and len(flask_calls) == 1


def test_other_requests_never_meet_it(app, flask_calls, monkeypatch):
    """Bodies over FAST_BYTES, other methods and paths: straight to Flask, unread."""
    monkeypatch.setattr(fastpath, "FAST_BYTES", 100)
    client = app.test_client()
    assert client.post("/v2/models/digitgrad/infer",
                       json=pixels_request(strokes(1))).status_code == 200
    assert len(flask_calls) == 1
    assert client.get("/v2/models/digitgrad/infer").status_code == 405
    assert client.post("/v2/models/digitgrad/infer/", json={}).status_code in (404, 308)
    assert len(flask_calls) == 1


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(count=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
       kind=st.sampled_from(["uniform", "ink", "extremes"]), binary_out=st.booleans(),
       request_id=st.none() | st.text(max_size=5))
def test_any_answerable_pixels_are_answered_alike(app, count, seed, kind, binary_out,
                                                  request_id):
    rng = np.random.default_rng(seed)
    images = rng.random((count, 28, 28), dtype=np.float32)
    if kind == "ink":  # mostly black, a few strokes
        images = np.where(images > 0.9, images, 0).astype(np.float32)
    elif kind == "extremes":
        images = np.round(images).astype(np.float32)
    query = pixels_request(images, parameters={"binary_data_output": binary_out})
    if request_id is not None:
        query["id"] = request_id
    fast, flask = both(app, "/v2/models/digitgrad/infer", json.dumps(query).encode(), {})
    assert fast.status_code == 200
    assert_same(fast, flask)


def test_a_request_refused_before_its_body_is_read_leaves_it_unread(app):
    """An unknown model is refused without reading the body, by either path (a client that
    sent ``Expect: 100-continue`` is then never asked for it)."""

    class Unread:
        def read(self, *args):
            raise AssertionError("the body was read")

    environ = {"REQUEST_METHOD": "POST", "PATH_INFO": "/v2/models/nope/infer",
               "CONTENT_LENGTH": "10", "wsgi.input": Unread(), "SERVER_NAME": "localhost",
               "SERVER_PORT": "80", "wsgi.url_scheme": "http"}
    statuses = []
    body = b"".join(app.wsgi_app(environ, lambda status, headers: statuses.append(status)))
    assert statuses == ["404 NOT FOUND"] and b"Unknown model" in body


def test_its_routes_are_the_apps(app):
    """The metrics and log lines name the route as Flask does: the rules must be the app's."""
    rules = {rule.rule for rule in app.url_map.iter_rules() if rule.endpoint == "v2.infer"}
    assert rules == set(fastpath.RULES)
    for rule in rules:
        path = rule.replace("<name>", "digitgrad").replace("<version>", "abc")
        match = fastpath.PATH.fullmatch(path)
        assert match and fastpath.RULES[match.group(2) is not None] == rule
