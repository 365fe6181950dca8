"""server/requestlog.py: request ids kept or made, echoed, and one JSON log line per request."""

from __future__ import annotations

import io
import json
import re

import pytest
from drawing import digit_png

from server.requestlog import HEADER


def log_lines(capsys) -> list[dict]:
    """The JSON lines the requests so far wrote to stdout."""
    return [json.loads(line) for line in capsys.readouterr().out.splitlines()]


def test_an_incoming_request_id_is_kept_echoed_and_logged(client, capsys):
    response = client.get("/healthz", headers={HEADER: "edge-7f3a.2"})
    assert response.headers[HEADER] == "edge-7f3a.2"
    (line,) = log_lines(capsys)
    assert line["request_id"] == "edge-7f3a.2"
    assert line["route"] == "/healthz" and line["method"] == "GET" and line["status"] == 200
    assert line["latency_ms"] >= 0 and line["pid"] > 0
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", line["time"]), line["time"]


@pytest.mark.parametrize("incoming", [None, "", "x" * 129, "two words", "id\u00e9", "-leading"])
def test_a_missing_or_unusable_request_id_is_replaced_by_a_new_one(client, capsys, incoming):
    headers = {} if incoming is None else {HEADER: incoming}
    first = client.get("/healthz", headers=headers).headers[HEADER]
    second = client.get("/healthz", headers=headers).headers[HEADER]
    assert re.fullmatch(r"[0-9a-f]{32}", first) and first != second
    assert [line["request_id"] for line in log_lines(capsys)] == [first, second]


def test_a_prediction_logs_its_digit_confidence_and_model_but_never_the_image(client, capsys):
    png = digit_png()
    response = client.post("/predict", data={"image": (io.BytesIO(png), "digit.png")})
    answer = response.get_json()
    raw = capsys.readouterr().out
    line = json.loads(raw)
    assert line["request_id"] == response.headers[HEADER]
    assert (line["route"], line["status"]) == ("/predict", 200)
    assert line["model"] == answer["model"]
    assert line["digit"] == answer["digit"]
    assert line["confidence"] == pytest.approx(answer["confidence"], abs=1e-4)
    assert len(raw.splitlines()) == 1 and len(raw) < 400, "one short line, no image bytes"


def test_batches_numbers_and_v2_log_every_digit(client, capsys):
    png = digit_png()
    batch = client.post("/predict/batch", data={"images": [(io.BytesIO(png), "a.png"),
                                                           (io.BytesIO(b"junk"), "b.png"),
                                                           (io.BytesIO(png), "c.png")]})
    predictions = batch.get_json()["predictions"]
    (line,) = log_lines(capsys)
    assert line["digits"] == [predictions[0]["digit"], predictions[2]["digit"]]
    assert len(line["confidences"]) == 2 and "digit" not in line

    pixels = [0.0] * 784
    infer = client.post("/v2/models/digitgrad/infer", json={"inputs": [
        {"name": "pixels", "shape": [2, 28, 28], "datatype": "FP32", "data": pixels * 2}]})
    assert infer.status_code == 200, infer.get_json()
    (line,) = log_lines(capsys)
    digits = next(o for o in infer.get_json()["outputs"] if o["name"] == "digit")["data"]
    assert line["route"] == "/v2/models/<name>/infer" and line["digits"] == digits


def test_errors_and_unknown_routes_are_logged_with_their_id(client, capsys):
    response = client.post("/predict", data=b"not an image", content_type="image/png",
                           headers={HEADER: "abc"})
    assert response.status_code == 400 and response.headers[HEADER] == "abc"
    missing = client.get("/no/such/page")
    lines = log_lines(capsys)
    assert [(line["route"], line["status"]) for line in lines] == [
        ("/predict", 400), ("unmatched", 404)]
    assert lines[1]["request_id"] == missing.headers[HEADER]
    assert "digit" not in lines[0] and "digits" not in lines[0]
