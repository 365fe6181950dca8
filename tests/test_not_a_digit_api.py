"""The not-a-digit decision over HTTP: 422 not_a_digit with the closest answer, ?plain=1, per
image in a batch, per piece of a number, and V2's is_digit / digit_probability outputs.

Model files with a decision are made by hand (an eleven-output CNN and a threshold), so each
answer is known: tests/test_not_a_digit.py trains one for real.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
from drawing import digit_png
from PIL import Image, ImageDraw

from models import ConvNetwork, preprocessing_config, save
from models.decision import Decision
from server import imaging
from server.model import LoadedModel

PREPROCESSING = preprocessing_config(0.1307, 0.3081)


def model_file(path, threshold: float):
    network = ConvNetwork(dim_output=11, channels=(4, 8), hidden_dims=(16,),
                          rng=np.random.default_rng(0))
    save(network, path, {"preprocessing": PREPROCESSING,
                         "decision": Decision(threshold, 1.5).to_metadata()})
    return path


def upload(data: bytes, field: str = "image") -> dict:
    return {field: (io.BytesIO(data), "upload.png")}


def other_png() -> bytes:
    """A second drawing, a ring, whose log-odds differ from digit_png's "7"."""
    image = Image.new("L", (64, 64), 255)
    ImageDraw.Draw(image).ellipse([10, 8, 54, 56], outline=0, width=6)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


@pytest.fixture
def refusing(make_app, tmp_path):
    """A client of a model that takes nothing for a digit."""
    return make_app(MODEL_PATH=str(model_file(tmp_path / "refuses.npz", 1e6))).test_client()


def assert_not_a_digit(response) -> dict:
    assert response.status_code == 422, response.get_data(as_text=True)
    error = response.get_json()["error"]
    assert error["code"] == "not_a_digit" and "plain=1" in error["message"]
    return error["closest"]


def test_predict_refuses_with_the_closest_digit_and_plain_answers(refusing):
    closest = assert_not_a_digit(refusing.post("/predict", data=upload(digit_png())))
    assert closest["is_digit"] is False and 0 <= closest["digit"] <= 9
    assert closest["confidence"] == closest["probabilities"][closest["digit"]]
    # nothing renormalised: the digits' probabilities sum to the probability of a digit
    assert sum(closest["probabilities"]) == pytest.approx(closest["digit_probability"])
    plain = refusing.post("/predict?plain=1", data=upload(digit_png()))
    assert plain.status_code == 200
    assert plain.get_json() == closest
    metrics = refusing.get("/metrics").get_data(as_text=True)
    assert 'digitgrad_rejections_total{reason="not_a_digit"} 1.0' in metrics


def test_batch_and_number_decide_per_image_and_per_piece(refusing):
    files = {"images": [(io.BytesIO(digit_png()), "a.png"), (io.BytesIO(b"junk"), "b.png")]}
    entries = refusing.post("/predict/batch", data=files).get_json()["predictions"]
    assert entries[0]["error"]["code"] == "not_a_digit"
    assert entries[0]["error"]["closest"]["is_digit"] is False
    assert entries[1]["error"]["code"] == "invalid_image"
    files = {"images": [(io.BytesIO(digit_png()), "a.png")]}
    entries = refusing.post("/predict/batch?plain=1", data=files).get_json()["predictions"]
    assert entries[0]["is_digit"] is False and "error" not in entries[0]

    closest = assert_not_a_digit(refusing.post("/predict/number", data=upload(digit_png())))
    assert [d["is_digit"] for d in closest["digits"]] == [False]
    assert closest["number"] == str(closest["digits"][0]["digit"])
    plain = refusing.post("/predict/number?plain=1", data=upload(digit_png()))
    assert plain.status_code == 200 and plain.get_json() == closest


def test_a_batch_refuses_only_the_image_that_is_not_a_digit(make_app, tmp_path):
    path = model_file(tmp_path / "model.npz", 0.0)
    model = LoadedModel(path)
    images = np.stack([imaging.to_mnist(digit_png()), imaging.to_mnist(other_png())])
    odds = model.answer(images).digit_log_odds
    assert odds[0] != odds[1]
    # the threshold between the two: the one with the higher log-odds is a digit
    model_file(path, float(odds.mean()))
    client = make_app(MODEL_PATH=str(path)).test_client()
    files = {"images": [(io.BytesIO(digit_png()), "a.png"), (io.BytesIO(other_png()), "b.png")]}
    entries = client.post("/predict/batch", data=files).get_json()["predictions"]
    refused = ["error" in entry for entry in entries]
    assert refused == [bool(o < odds.mean()) for o in odds]


def test_v2_never_refuses_and_says_whether_each_input_is_a_digit(refusing, make_app, tmp_path):
    pixels = np.zeros((2, 28, 28), dtype=np.float32)
    pixels[:, 4:24, 13:15] = 1.0
    query = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28],
                         "data": pixels.ravel().tolist()}]}
    for client, expected in ((refusing, False), (make_app(MODEL_PATH=str(
            model_file(tmp_path / "accepts.npz", -1e6))).test_client(), True)):
        response = client.post("/v2/models/digitgrad/infer", json=query)
        assert response.status_code == 200
        outputs = {o["name"]: o for o in response.get_json()["outputs"]}
        assert outputs["is_digit"]["data"] == [expected, expected]
        sure = outputs["digit_probability"]["data"]
        total = np.reshape(outputs["probabilities"]["data"], (2, 10)).sum(axis=1)
        np.testing.assert_allclose(sure, total, rtol=1e-5)


def test_a_model_that_takes_everything_for_a_digit_answers_as_before(make_app, tmp_path):
    client = make_app(MODEL_PATH=str(model_file(tmp_path / "accepts.npz", -1e6))).test_client()
    body = client.post("/predict", data=upload(digit_png())).get_json()
    assert body["is_digit"] is True and body["digit_probability"] < 1
    assert client.get("/model").get_json()["decision"]["threshold"] == -1e6
