"""The Open Inference Protocol (V2) routes through Flask's test client: metadata, JSON and binary
tensors, output subsets, every refusal, the limits checked before any work, the metrics."""

from __future__ import annotations

import io
import json
import struct

import numpy as np
import pytest
from drawing import digit_png
from test_api import blank_png, scrape

from server import v2
from server.state import get_serving

TOKEN = "do-not-echo-7f3a"
SECRET = f"<script>{TOKEN}</script>"


@pytest.fixture
def app(make_app):
    return make_app(MAX_BATCH_FILES=4, MAX_UPLOAD_BYTES=60_000)


@pytest.fixture
def model(app):
    return get_serving(app).model


def strokes(n: int) -> np.ndarray:
    """n different (28, 28) float32 images in [0, 1], ink bright on black."""
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for i in range(n):
        images[i, 4:24, 6 + 3 * i:9 + 3 * i] = 1.0
        images[i, 6 + i, 4:24] = 0.5
    return images


def pixels_request(images: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(images.shape),
                        "data": images.ravel().tolist()}], **extra}


def infer(client, body, headers: dict | None = None, model: str = "digitgrad", path: str = ""):
    """POST an inference request: a dict is sent as JSON without any Content-Type."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    return client.post(f"/v2/models/{model}{path}/infer", data=data, headers=headers or {})


def binary_request(query: dict, payload: bytes) -> tuple[bytes, dict]:
    """The binary extension's body and header: the JSON, then the tensor bytes."""
    header = json.dumps(query).encode()
    return header + payload, {"Inference-Header-Content-Length": str(len(header)),
                              "Content-Type": "application/octet-stream"}


def split_response(response) -> tuple[dict, bytes]:
    length = response.headers.get("Inference-Header-Content-Length")
    data = response.get_data()
    if length is None:
        return json.loads(data), b""
    return json.loads(data[:int(length)]), data[int(length):]


def assert_v2_error(response, status: int) -> str:
    """The protocol's error: exactly {"error": "<message>"}, nothing echoed."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    assert TOKEN not in response.get_data(as_text=True)
    return body["error"]


def encode_bytes(elements: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def image_request(elements: list[bytes]) -> tuple[bytes, dict]:
    payload = encode_bytes(elements)
    query = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(elements)],
                         "parameters": {"binary_data_size": len(payload)}}]}
    return binary_request(query, payload)


# --- health and metadata --------------------------------------------------------------------


def test_server_health_and_metadata(client):
    assert client.get("/v2/health/live").get_json() == {"live": True}
    ready = client.get("/v2/health/ready")
    assert ready.status_code == 200 and ready.get_json() == {"ready": True}
    meta = client.get("/v2").get_json()
    assert meta["name"] == "digitgrad" and meta["version"]
    assert meta["extensions"] == ["binary_tensor_data"]


@pytest.mark.parametrize("name, tensor", [
    ("digitgrad", {"name": "pixels", "datatype": "FP32", "shape": [-1, 28, 28]}),
    ("digitgrad-image", {"name": "image", "datatype": "BYTES", "shape": [-1]}),
])
def test_model_metadata_lists_the_real_tensors_and_the_model_id(client, model, name, tensor):
    for path in (f"/v2/models/{name}", f"/v2/models/{name}/versions/{model.model_id}"):
        meta = client.get(path).get_json()
        assert meta == {
            "name": name, "versions": [model.model_id], "platform": "digitgrad",
            "inputs": [tensor],
            "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
                        {"name": "digit", "datatype": "INT64", "shape": [-1]},
                        {"name": "attributions", "datatype": "FP32", "shape": [-1, 28, 28]}],
        }
        ready = client.get(path + "/ready")
        assert ready.status_code == 200 and ready.get_json() == {"name": name, "ready": True}


@pytest.mark.parametrize("path", [
    f"/v2/models/{TOKEN}", "/v2/models/digitgrad/versions/0123456789ab",
    "/v2/models/mnist/ready", "/v2/models/digitgrad/versions/1/ready",
])
def test_unknown_model_or_version_is_404(client, path):
    assert_v2_error(client.get(path), 404)
    assert_v2_error(client.post(path.removesuffix("/ready") + "/infer", data=b"{}"), 404)


def test_not_ready_model_is_503_everywhere(client, model, monkeypatch):
    monkeypatch.setattr(model, "self_test_error", "self-test: broken on purpose")
    assert client.get("/v2/health/ready").status_code == 503
    assert client.get("/v2/models/digitgrad/ready").get_json()["ready"] is False
    assert_v2_error(infer(client, pixels_request(strokes(1))), 503)
    assert client.get("/v2/health/live").status_code == 200


# --- inference: pixels ----------------------------------------------------------------------


def test_json_pixels_give_the_models_probabilities_and_echo_the_id(client, model):
    images = strokes(3)
    response = infer(client, pixels_request(images, id="req-42"))
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["model_name"] == "digitgrad" and body["model_version"] == model.model_id
    assert body["id"] == "req-42"
    outputs = {o["name"]: o for o in body["outputs"]}
    assert list(outputs) == ["probabilities", "digit"]
    expected = model.predict(images)
    probabilities = outputs["probabilities"]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [3, 10]
    np.testing.assert_allclose(np.reshape(probabilities["data"], (3, 10)), expected, atol=1e-6)
    assert outputs["digit"] == {"name": "digit", "datatype": "INT64", "shape": [3],
                                "data": expected.argmax(axis=1).tolist()}


def test_nested_json_data_and_json_content_type_are_accepted(client, model):
    images = strokes(2)
    body = pixels_request(images)
    body["inputs"][0]["data"] = images.tolist()
    response = infer(client, body, headers={"Content-Type": "application/json"})
    assert response.status_code == 200
    assert "id" not in response.get_json()


def test_binary_pixels_in_and_binary_outputs_out(client, model):
    images = strokes(2)
    payload = images.astype("<f4").tobytes()
    query = {"id": "b1", "parameters": {"binary_data_output": True},
             "inputs": [{"name": "pixels", "datatype": "FP32", "shape": [2, 28, 28],
                         "parameters": {"binary_data_size": len(payload)}}]}
    response = infer(client, *binary_request(query, payload))
    assert response.status_code == 200
    header, data = split_response(response)
    assert header["id"] == "b1"
    sizes = [o["parameters"]["binary_data_size"] for o in header["outputs"]]
    assert sizes == [2 * 10 * 4, 2 * 8] and len(data) == sum(sizes)
    probabilities = np.frombuffer(data[:80], "<f4").reshape(2, 10)
    digits = np.frombuffer(data[80:], "<i8")
    expected = model.predict(images)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert digits.tolist() == expected.argmax(axis=1).tolist()


def test_outputs_subset_in_the_order_asked_binary_per_output(client, model):
    images = strokes(1)
    body = pixels_request(images, outputs=[
        {"name": "digit"}, {"name": "probabilities", "parameters": {"binary_data": True}}])
    header, data = split_response(infer(client, body))
    assert [o["name"] for o in header["outputs"]] == ["digit", "probabilities"]
    assert header["outputs"][0]["data"] == [int(model.predict(images).argmax())]
    assert header["outputs"][1]["parameters"] == {"binary_data_size": 40} and len(data) == 40

    only = infer(client, pixels_request(images, outputs=[{"name": "digit"}])).get_json()
    assert [o["name"] for o in only["outputs"]] == ["digit"]


def test_versioned_infer_uses_the_model_id(client, model):
    path = f"/versions/{model.model_id}"
    body = infer(client, pixels_request(strokes(1)), path=path).get_json()
    assert body["model_version"] == model.model_id


# --- inference: image files -----------------------------------------------------------------


def test_image_files_go_through_the_predict_pipeline(client, model):
    pngs = [digit_png(), digit_png(96, "JPEG")]
    response = infer(client, *image_request(pngs), model="digitgrad-image")
    assert response.status_code == 200, response.get_data()
    body = response.get_json()
    assert body["model_name"] == "digitgrad-image"
    probabilities = np.reshape(body["outputs"][0]["data"], (2, 10))
    for png, row in zip(pngs, probabilities):
        single = client.post("/predict", data=png, content_type="image/png").get_json()
        np.testing.assert_allclose(row, single["probabilities"], atol=1e-6)


def test_json_bytes_strings_reach_the_pipeline(client):
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                        "data": ["not an image"]}]}
    assert "Image 0" in assert_v2_error(infer(client, body, model="digitgrad-image"), 400)


@pytest.mark.parametrize("elements", [
    [digit_png(), blank_png()],   # no digit in the second
    [SECRET.encode()],           # not an image
    [b""],                        # empty
])
def test_a_refused_image_is_400_naming_which(client, elements):
    message = assert_v2_error(infer(client, *image_request(elements), model="digitgrad-image"),
                              400)
    assert message.startswith(f"Image {len(elements) - 1}: ")


def test_image_limits_are_checked_before_any_decoding(client, app, monkeypatch):
    def never(*args, **kwargs):
        raise AssertionError("decoded an image of a request that must be refused first")

    monkeypatch.setattr(get_serving(app).inference, "transform", never)
    too_big = b"\x89PNG" + bytes(60_001)
    assert "limit of 60000 bytes" in assert_v2_error(
        infer(client, *image_request([digit_png(), too_big]), model="digitgrad-image"), 400)
    assert "1 to 4 images" in assert_v2_error(
        infer(client, *image_request([digit_png()] * 5), model="digitgrad-image"), 400)


def test_an_image_batch_may_exceed_one_uploads_limit(client):
    # Each file within the 60 kB limit of one upload, the body above it: a batch's body limit
    # is the batch size times the file limit, as for /predict/batch. (Pillow ignores the
    # bytes after a PNG's end.)
    big = digit_png() + bytes(40_000)
    response = infer(client, *image_request([big, big]), model="digitgrad-image")
    assert response.status_code == 200, response.get_data()


# --- refusals -------------------------------------------------------------------------------


def bad_pixels(**change) -> dict:
    body = pixels_request(strokes(1))
    body["inputs"][0].update(change)
    return body


@pytest.mark.parametrize("body", [
    b"not json" + SECRET.encode(),
    b"[1, 2]",
    {"inputs": []},
    {"inputs": "pixels"},
    {"id": 7, **pixels_request(strokes(1))},
    bad_pixels(name="input0"),
    bad_pixels(datatype="FP64"),
    bad_pixels(datatype="BYTES"),
    bad_pixels(shape=[1, 784]),
    bad_pixels(shape=[28, 28]),
    bad_pixels(shape=[1, 28, 28.0]),
    bad_pixels(shape=[True, 28, 28]),
    bad_pixels(shape=[0, 28, 28]),
    bad_pixels(shape=[5, 28, 28]),
    bad_pixels(data=[0.5] * 783),
    bad_pixels(data=[SECRET] * 784),
    bad_pixels(data=[[0.5] * 28] * 27 + [[0.5] * 27]),
    bad_pixels(data=[True] * 784),
    bad_pixels(data=[2.0] * 784),
    bad_pixels(data=[-0.1] + [0.0] * 783),
    {**bad_pixels(), "outputs": [{"name": "logits"}]},
    {**bad_pixels(), "outputs": []},
    {**bad_pixels(), "parameters": [1]},
])
def test_bad_requests_are_400(client, body):
    assert_v2_error(infer(client, body), 400)


def test_nan_pixels_are_400(client):
    data = json.dumps(pixels_request(strokes(1))).replace("0.0", "NaN", 1).encode()
    assert "[0, 1]" in assert_v2_error(infer(client, data), 400)


@pytest.mark.parametrize("header_length", ["-1", "abc", "999999"])
def test_bad_header_length_is_400(client, header_length):
    body, headers = binary_request(pixels_request(strokes(1)), b"")
    headers["Inference-Header-Content-Length"] = header_length
    assert_v2_error(infer(client, body, headers=headers), 400)


@pytest.mark.parametrize("declared, actual", [(3136, 3135), (3135, 3135), (3136, 3137)])
def test_binary_size_must_match_the_shape_and_the_body(client, declared, actual):
    query = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28],
                         "parameters": {"binary_data_size": declared}}]}
    assert_v2_error(infer(client, *binary_request(query, bytes(actual))), 400)


def test_binary_data_without_a_binary_input_is_400(client):
    assert_v2_error(infer(client, *binary_request(pixels_request(strokes(1)), b"\0" * 8)), 400)


@pytest.mark.parametrize("payload", [
    struct.pack("<I", 10) + b"short",             # element longer than the data
    encode_bytes([digit_png()]) + b"extra",      # bytes after the last element
    b"\x01\x00",                                  # a truncated length
])
def test_malformed_binary_bytes_are_400(client, payload):
    query = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1],
                         "parameters": {"binary_data_size": len(payload)}}]}
    assert_v2_error(infer(client, *binary_request(query, payload), model="digitgrad-image"), 400)


def test_body_over_the_limit_is_413_before_parsing(client, monkeypatch):
    monkeypatch.setattr(v2, "_split_body", lambda *a: pytest.fail("parsed an oversized body"))
    message = assert_v2_error(infer(client, b"{" + b" " * 60_001 + b"}"), 413)
    assert "60000 bytes" in message


def test_chunked_body_over_the_limit_is_413(client):
    """Without Content-Length, as gunicorn passes chunked bodies on (input terminated)."""
    response = client.post("/v2/models/digitgrad/infer",
                           input_stream=io.BytesIO(b"{" + b" " * 70_000 + b"}"),
                           environ_overrides={"wsgi.input_terminated": True})
    assert_v2_error(response, 413)


# --- metrics --------------------------------------------------------------------------------


def test_metrics_count_v2_routes_by_template_and_time_each_stage(client):
    before = scrape(client)
    infer(client, pixels_request(strokes(2)))
    infer(client, bad_pixels(datatype="FP64"))
    client.get("/v2/models/digitgrad-image/ready")
    after = scrape(client)
    route = "/v2/models/<name>/infer"
    expected = {
        f'digitgrad_http_requests_total{{method="POST",route="{route}",status="200"}}': 1,
        f'digitgrad_http_requests_total{{method="POST",route="{route}",status="400"}}': 1,
        'digitgrad_http_requests_total{method="GET",route="/v2/models/<name>/ready",'
        'status="200"}': 1,
        'digitgrad_rejections_total{reason="invalid_request"}': 1,
        **{f'digitgrad_stage_duration_seconds_count{{route="{route}",stage="{stage}"}}': 1
           for stage in ("decode", "preprocess", "inference", "encode")},
    }
    for name, delta in expected.items():
        assert after.get(name, 0.0) - before.get(name, 0.0) == delta, name
