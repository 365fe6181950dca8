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
from server.bodies import FRAMING_BYTES
from server.inference import PREDICT_CHUNK, Busy
from server.model import LoadedModel
from server.state import get_serving

MAX_TENSOR_IMAGES = 4

TOKEN = "do-not-echo-7f3a"
SECRET = f"<script>{TOKEN}</script>"


#: The V2 tests' limits (tests/test_fastpath.py uses them too).
LIMITS = {"MAX_BATCH_FILES": 4, "MAX_UPLOAD_BYTES": 60_000,
          "MAX_TENSOR_IMAGES": MAX_TENSOR_IMAGES}


@pytest.fixture
def app(make_app):
    return make_app(**LIMITS)


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
                        {"name": "is_digit", "datatype": "BOOL", "shape": [-1]},
                        {"name": "digit_probability", "datatype": "FP32", "shape": [-1]},
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
    assert list(outputs) == ["probabilities", "digit", "is_digit", "digit_probability"]
    expected = model.predict(images)
    probabilities = outputs["probabilities"]
    assert probabilities["datatype"] == "FP32" and probabilities["shape"] == [3, 10]
    np.testing.assert_allclose(np.reshape(probabilities["data"], (3, 10)), expected, atol=1e-6)
    assert outputs["digit"] == {"name": "digit", "datatype": "INT64", "shape": [3],
                                "data": expected.argmax(axis=1).tolist()}
    # a model file without a decision calls everything a digit
    assert outputs["is_digit"] == {"name": "is_digit", "datatype": "BOOL", "shape": [3],
                                   "data": [True] * 3}
    assert outputs["digit_probability"]["data"] == [1.0] * 3


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
    assert sizes == [2 * 10 * 4, 2 * 8, 2, 2 * 4] and len(data) == sum(sizes)
    probabilities = np.frombuffer(data[:80], "<f4").reshape(2, 10)
    digits = np.frombuffer(data[80:96], "<i8")
    expected = model.predict(images)
    np.testing.assert_allclose(probabilities, expected, atol=1e-6)
    assert digits.tolist() == expected.argmax(axis=1).tolist()
    assert np.frombuffer(data[96:98], "?").tolist() == [True, True]  # BOOL: one byte each
    assert np.frombuffer(data[98:], "<f4").tolist() == [1.0, 1.0]


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
    # NaN is no JSON number (RFC 8259): refused by the parser; binary data can hold one
    data = json.dumps(pixels_request(strokes(1))).replace("0.0", "NaN", 1).encode()
    assert "JSON inference request" in assert_v2_error(infer(client, data), 400)
    pixels = strokes(1).astype("<f4")
    pixels[0, 0, 0] = np.nan
    query = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1, 28, 28],
                         "parameters": {"binary_data_size": pixels.nbytes}}]}
    body, headers = binary_request(query, pixels.tobytes())
    assert "[0, 1]" in assert_v2_error(infer(client, body, headers), 400)


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
    # pixels: the bytes MAX_TENSOR_IMAGES images may take as JSON, not one upload's limit
    monkeypatch.setattr(v2, "_split_body", lambda *a: pytest.fail("parsed an oversized body"))
    limit = MAX_TENSOR_IMAGES * v2.IMAGE_JSON_BYTES + FRAMING_BYTES
    assert limit == 4 * 784 * 24 + 64 * 1024
    message = assert_v2_error(infer(client, b"{" + b" " * limit + b"}"), 413)
    assert f"{limit} bytes" in message


def test_chunked_body_over_the_limit_is_413(client):
    """Without Content-Length, as gunicorn passes chunked bodies on (input terminated)."""
    response = client.post("/v2/models/digitgrad/infer",
                           input_stream=io.BytesIO(b"{" + b" " * 150_000 + b"}"),
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


# --- batches by cost, JSON bounds, overload -------------------------------------------------


def test_a_pixels_batch_runs_in_chunks_with_the_answers_of_single_images(make_app,
                                                                          monkeypatch):
    app = make_app(MAX_TENSOR_IMAGES=1024)
    model = get_serving(app).model
    sizes = []
    answer = LoadedModel.answer
    monkeypatch.setattr(LoadedModel, "answer",
                        lambda self, images: sizes.append(len(images)) or answer(self, images))
    rng = np.random.default_rng(0)
    images = rng.random((1024, 28, 28), dtype=np.float32)
    query = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": [1024, 28, 28],
                         "parameters": {"binary_data_size": images.nbytes}}]}
    response = infer(app.test_client(), *binary_request(query, images.tobytes()))
    assert response.status_code == 200, response.get_data()
    assert sizes == [PREDICT_CHUNK] * (1024 // PREDICT_CHUNK)
    outputs = {o["name"]: o for o in split_response(response)[0]["outputs"]}
    assert outputs["digit"]["data"] == answer(model, images).probabilities.argmax(axis=1).tolist()
    query["inputs"][0]["shape"][0] = 1025
    assert "1 to 1024 images" in assert_v2_error(infer(app.test_client(), *binary_request(
        query, np.zeros((1025, 28, 28), np.float32).tobytes())), 400)


def test_deep_nesting_is_400_not_a_recursion_error(client):
    deep = b"{\"inputs\": " + b"[" * 50_000 + b"]" * 50_000 + b"}"  # within the size limit
    assert_v2_error(infer(client, deep), 400)


@pytest.mark.parametrize("name", [["probabilities"], {"a": 1}, 3, None])
def test_an_output_name_that_is_no_string_is_400(client, name):
    assert_v2_error(infer(client, pixels_request(strokes(1), outputs=[{"name": name}])), 400)


def test_a_lone_surrogate_is_400(client):
    query = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["x"]}]}
    body = json.dumps(query).replace('"x"', '"\\ud800"').encode()
    assert_v2_error(infer(client, body, model="digitgrad-image"), 400)


def test_beyond_the_queue_requests_are_shed_with_503_and_counted(make_app):
    app = make_app(MAX_QUEUED_REQUESTS=0)
    client = app.test_client()
    slots = get_serving(app).inference.slots
    with slots:  # a request holds the worker's one compute slot; none may wait
        assert slots.full()
        # refused before the body is read
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(v2, "_split_body", lambda *a: pytest.fail("read a shed request"))
            response = infer(client, pixels_request(strokes(1)))
        assert "busy" in assert_v2_error(response, 503)
        assert response.headers["Retry-After"] == "1"
        response = client.post("/predict", data=digit_png(), content_type="image/png")
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.get_json()["error"]["code"] == "overloaded"
        with pytest.raises(Busy), slots:  # the slot's own check, as when the line filled
            pass                          # after the early one
    assert not slots.full()  # every request that took its place in line left it
    assert infer(client, pixels_request(strokes(1))).status_code == 200
    assert scrape(client)['digitgrad_rejections_total{reason="overloaded"}'] == 2


@pytest.mark.parametrize("filler", [b"[],", b"1.5,"])
def test_json_of_more_values_than_the_images_need_is_refused_unparsed(client, monkeypatch,
                                                                      filler):
    # within the body limit, but parsed it would take 10-20 times its size in memory
    count = MAX_TENSOR_IMAGES * 784 + 100
    body = b'{"inputs": [{"data": [' + filler * count + b"0]}]}"
    assert len(body) < MAX_TENSOR_IMAGES * v2.IMAGE_JSON_BYTES + FRAMING_BYTES
    with monkeypatch.context() as patch:
        patch.setattr(v2.orjson, "loads", lambda *a: pytest.fail("parsed a bomb"))
        response = infer(client, body)
    assert "more JSON arrays or values" in assert_v2_error(response, 400)


def test_the_image_models_json_is_counted_before_parsing_too(client, monkeypatch):
    # 83 MB of [], within the image model's body limit took a worker to 2.5 GB parsed
    body = (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ['
            + b"[]," * 5_000 + b"[]]}]}")
    with monkeypatch.context() as patch:
        patch.setattr(v2.orjson, "loads", lambda *a: pytest.fail("parsed a bomb"))
        response = infer(client, body, model="digitgrad-image")
    assert "more JSON arrays or values than" in assert_v2_error(response, 400)


def test_brackets_and_commas_inside_strings_are_not_counted(client):
    text = '[{"a": 1, "b": [2, 3]}, ' * 1000 + '\\" ,[ "'  # text, escapes and quotes
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [text]}],
            "id": "[" * 500}
    assert "Image 0" in assert_v2_error(infer(client, body, model="digitgrad-image"), 400)


def test_the_largest_nested_json_request_passes_the_shape_check(client):
    images = strokes(MAX_TENSOR_IMAGES)
    query = {"inputs": [{"name": "pixels", "datatype": "FP32", "shape": list(images.shape),
                         "data": images.tolist()}]}  # one list per image and per row
    assert infer(client, query).status_code == 200


def test_attributions_are_bounded_like_a_batch_of_files(make_app):
    # pixels up to 8, files and attributions up to 4: an explanation costs many passes an image
    client = make_app(MAX_TENSOR_IMAGES=8, MAX_BATCH_FILES=4).test_client()
    images = np.concatenate([strokes(4), strokes(4)])
    wanted = {"outputs": [{"name": "digit"}, {"name": "attributions"}]}
    assert infer(client, pixels_request(images[:4], **wanted)).status_code == 200
    assert infer(client, pixels_request(images)).status_code == 200
    message = assert_v2_error(infer(client, pixels_request(images, **wanted)), 400)
    assert "at most 4 images" in message
