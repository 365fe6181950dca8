"""Explanations over HTTP, through the real app: ?explain=1 on /predict and /predict/batch, the
V2 output "attributions", the rounding, the stage metrics, and plain predictions unchanged."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from drawing import digit_png
from test_api import blank_png, scrape, upload
from test_v2 import infer, pixels_request, split_response, strokes

from server import imaging
from server.api import ATTRIBUTION_DECIMALS
from server.state import get_serving


@pytest.fixture
def model(app):
    return get_serving(app).model


def expected_map(model, png: bytes) -> tuple[int, np.ndarray]:
    """The digit and the attributions the service should give for ``png``."""
    image = imaging.to_mnist(png)
    digit = int(model.predict(image[None])[0].argmax())
    return digit, model.explain(image, digit)


def test_predict_explain_gives_the_attributions_over_the_image_seen(client, model):
    png = digit_png()
    body = client.post("/predict?explain=1&debug=1", data=upload(png)).get_json()
    digit, expected = expected_map(model, png)
    assert body["digit"] == digit
    attributions = np.array(body["attributions"])
    assert attributions.shape == (28, 28)
    # rounded to 4 decimal places, nothing else
    np.testing.assert_allclose(attributions, expected, rtol=0, atol=0.5e-4 + 1e-7)
    assert np.all(attributions == np.round(attributions, ATTRIBUTION_DECIMALS))
    seen = np.asarray(imaging.to_mnist(png))
    assert np.all(attributions[seen == 0] == 0)  # a black baseline credits ink only
    assert np.abs(attributions).max() > 0
    text = client.post("/predict?explain=true", data=upload(png)).get_data(as_text=True)
    assert not re.search(r"-0\.0[,\]]", text)  # rounded to zero is 0.0, not -0.0


def test_plain_predictions_carry_no_attributions_and_skip_the_explain_stage(client):
    before = scrape(client)
    for query in ("", "?explain=0", "?debug=1"):
        body = client.post(f"/predict{query}", data=upload(digit_png())).get_json()
        assert "attributions" not in body
    client.post("/predict?explain=1", data=upload(digit_png()))
    after = scrape(client)
    name = 'digitgrad_stage_duration_seconds_count{route="/predict",stage="explain"}'
    assert after[name] - before.get(name, 0.0) == 1


def test_batch_explain_explains_each_readable_file(client, model):
    files = [digit_png(), blank_png(), digit_png(90, "JPEG")]
    data = {"images": [(io.BytesIO(f), f"{i}.png") for i, f in enumerate(files)]}
    entries = client.post("/predict/batch?explain=1", data=data).get_json()["predictions"]
    assert entries[1]["error"]["code"] == "no_digit_found"
    for entry, png in ((entries[0], files[0]), (entries[2], files[2])):
        digit, expected = expected_map(model, png)
        assert entry["digit"] == digit
        np.testing.assert_allclose(entry["attributions"], expected, atol=0.5e-4 + 1e-7)
    plain = client.post("/predict/batch", data={"images": [(io.BytesIO(files[0]), "a.png")]})
    assert "attributions" not in plain.get_json()["predictions"][0]


def test_v2_attributions_output_as_json_and_binary(client, model):
    images = strokes(3)
    expected_digits = model.predict(images).argmax(axis=1)
    for binary in (False, True):
        query = pixels_request(images, outputs=[
            {"name": "attributions", "parameters": {"binary_data": binary}},
            {"name": "digit"}])
        response = infer(client, query)
        assert response.status_code == 200, response.get_data(as_text=True)
        head, payload = split_response(response)
        attributions, digit = head["outputs"]
        assert attributions["name"] == "attributions" and attributions["datatype"] == "FP32"
        assert attributions["shape"] == [3, 28, 28]
        maps = (np.frombuffer(payload, "<f4") if binary
                else np.array(attributions["data"], dtype=np.float32)).reshape(3, 28, 28)
        assert digit["data"] == expected_digits.tolist()
        for image, d, got in zip(images, expected_digits, maps):
            np.testing.assert_allclose(got, model.explain(image, int(d)), rtol=1e-6, atol=1e-7)


def test_v2_requests_naming_no_outputs_are_not_explained(client):
    before = scrape(client)
    head, _ = split_response(infer(client, pixels_request(strokes(2))))
    assert [o["name"] for o in head["outputs"]] == ["probabilities", "digit", "is_digit",
                                                 "digit_probability"]
    after = scrape(client)
    name = ('digitgrad_stage_duration_seconds_count{route="/v2/models/<name>/infer",'
            'stage="explain"}')
    assert after.get(name, 0.0) == before.get(name, 0.0)
