"""The Open Inference Protocol with a real client: NVIDIA's tritonclient[http] against gunicorn
(the repo's config) on loopback, JSON and binary tensors, both models, errors and metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from drawing import digit_png
from serving import request, running_gunicorn

from models import DeepNetwork, preprocessing_config, save
from server import v2
from server.bodies import FRAMING_BYTES
from server.model import LoadedModel

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

MAX_UPLOAD_BYTES = 60_000
MAX_TENSOR_IMAGES = 4


def serve(model_path, tmp_path):
    """gunicorn (2 workers) serving model_path until the block ends; yields the base URL."""
    return running_gunicorn(model_path, tmp_path / "gunicorn.log", tmp_path / "prometheus",
                            MAX_UPLOAD_BYTES=str(MAX_UPLOAD_BYTES),
                            MAX_TENSOR_IMAGES=str(MAX_TENSOR_IMAGES))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """gunicorn serving an untrained tiny model; yields (base URL, the model in-process)."""
    tmp_path = tmp_path_factory.mktemp("v2-client")
    path = tmp_path / "tiny.npz"
    save(DeepNetwork(784, 10, 16, 1, rng=np.random.default_rng(1)), path,
         {"preprocessing": preprocessing_config(0.1307, 0.3081)})
    with serve(path, tmp_path) as (base, _process):
        yield base, LoadedModel(path)


@pytest.fixture
def triton(server):
    """tritonclient's HTTP client of the module's server."""
    base, _ = server
    with httpclient.InferenceServerClient(base.removeprefix("http://")) as client:
        yield client


def strokes(n: int) -> np.ndarray:
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for i in range(n):
        images[i, 4:24, 5 + 3 * i:8 + 3 * i] = 0.9
    return images


def pixels_input(images: np.ndarray, binary: bool):
    tensor = httpclient.InferInput("pixels", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def images_input(files: list[bytes]):
    tensor = httpclient.InferInput("image", [len(files)], "BYTES")
    tensor.set_data_from_numpy(np.array(files, dtype=np.object_), binary_data=True)
    return tensor


def outputs(*names: str, binary: bool):
    return [httpclient.InferRequestedOutput(name, binary_data=binary) for name in names]


def refused(call) -> tuple[str, str]:
    """(HTTP status, message) of a call the server must refuse."""
    with pytest.raises(InferenceServerException) as info:
        call()
    return info.value.status(), info.value.message()


def test_health_and_metadata(triton, server):
    _, model = server
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata()
    assert meta["name"] == "digitgrad" and "binary_tensor_data" in meta["extensions"]
    for name, tensor in [("digitgrad", ("pixels", "FP32", [-1, 28, 28])),
                         ("digitgrad-image", ("image", "BYTES", [-1]))]:
        assert triton.is_model_ready(name) and triton.is_model_ready(name, model.model_id)
        meta = triton.get_model_metadata(name, model.model_id)
        assert meta["versions"] == [model.model_id]
        inputs = [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]]
        assert inputs == [tensor]
        assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [
            ("probabilities", "FP32"), ("digit", "INT64"), ("is_digit", "BOOL"),
            ("digit_probability", "FP32"), ("attributions", "FP32")]
    assert not triton.is_model_ready("mnist")
    assert not triton.is_model_ready("digitgrad", "0123456789ab")
    assert refused(lambda: triton.get_model_metadata("mnist"))[0] == "404"


@pytest.mark.parametrize("binary_in, binary_out", [(False, False), (True, True), (False, True)])
def test_pixels_json_and_binary_match_the_model(triton, server, binary_in, binary_out):
    _, model = server
    images = strokes(3)
    result = triton.infer("digitgrad", [pixels_input(images, binary_in)],
                          outputs=outputs("probabilities", "digit", binary=binary_out),
                          request_id="req-7")
    response = result.get_response()
    assert response["id"] == "req-7" and response["model_version"] == model.model_id
    expected = model.predict(images)
    np.testing.assert_allclose(result.as_numpy("probabilities"), expected, atol=1e-6)
    assert result.as_numpy("digit").tolist() == expected.argmax(axis=1).tolist()
    assert result.as_numpy("digit").dtype == np.int64


def test_output_subset_and_default_binary_outputs(triton, server):
    _, model = server
    images = strokes(2)
    only = triton.infer("digitgrad", [pixels_input(images, True)],
                        outputs=outputs("digit", binary=False))
    assert [o["name"] for o in only.get_response()["outputs"]] == ["digit"]
    assert only.as_numpy("probabilities") is None
    # No outputs named: tritonclient asks for all of them as binary (binary_data_output).
    every = triton.infer("digitgrad", [pixels_input(images, False)])
    assert all("binary_data_size" in o["parameters"] for o in every.get_response()["outputs"])
    np.testing.assert_allclose(every.as_numpy("probabilities"), model.predict(images), atol=1e-6)
    assert "id" not in every.get_response()


@pytest.mark.parametrize("binary", [False, True])
def test_attributions_only_when_asked_for(triton, server, binary):
    """The optional output: FP32 [N, 28, 28], each image's explanation of its digit, as the
    loaded model computes it; a request naming no outputs does not pay for it."""
    _, model = server
    images = strokes(2)
    result = triton.infer("digitgrad", [pixels_input(images, binary)],
                          outputs=outputs("digit", "attributions", binary=binary))
    maps = result.as_numpy("attributions")
    assert maps.shape == (2, 28, 28) and maps.dtype == np.float32
    for image, digit, got in zip(images, result.as_numpy("digit"), maps):
        np.testing.assert_allclose(got, model.explain(image, int(digit)), rtol=1e-5, atol=1e-7)
    default = triton.infer("digitgrad", [pixels_input(images, binary)])
    assert default.as_numpy("attributions") is None


def test_image_files_match_predict(triton, server):
    base, _ = server
    files = [digit_png(), digit_png(80, "JPEG")]
    result = triton.infer("digitgrad-image", [images_input(files)],
                          outputs=outputs("probabilities", "digit", binary=True))
    for row, digit, data in zip(result.as_numpy("probabilities"), result.as_numpy("digit"),
                                files):
        status, body = request(base + "/predict", data, {"Content-Type": "image/png"})
        assert status == 200
        single = json.loads(body)
        np.testing.assert_allclose(row, single["probabilities"], atol=1e-6)
        assert digit == single["digit"]


def test_errors_reach_the_client_with_the_protocols_status(triton, server):
    base, _ = server
    wrong_shape = httpclient.InferInput("pixels", [1, 784], "FP32")
    wrong_shape.set_data_from_numpy(np.zeros((1, 784), np.float32))
    status, message = refused(lambda: triton.infer("digitgrad", [wrong_shape]))
    assert status == "400" and "[N, 28, 28]" in message

    wrong_type = httpclient.InferInput("pixels", [1, 28, 28], "FP64")
    wrong_type.set_data_from_numpy(np.zeros((1, 28, 28), np.float64))
    assert refused(lambda: triton.infer("digitgrad", [wrong_type]))[0] == "400"

    out_of_range = pixels_input(strokes(1) * 255, binary=True)
    assert refused(lambda: triton.infer("digitgrad", [out_of_range]))[0] == "400"

    too_many = pixels_input(strokes(1).repeat(MAX_TENSOR_IMAGES + 1, axis=0), binary=True)
    status, message = refused(lambda: triton.infer("digitgrad", [too_many]))
    assert status == "400" and f"1 to {MAX_TENSOR_IMAGES} images" in message

    status, message = refused(lambda: triton.infer(
        "digitgrad-image", [images_input([digit_png(), b"not an image"])]))
    assert status == "400" and message.startswith("Image 1: ")

    assert refused(lambda: triton.infer("mnist", [pixels_input(strokes(1), True)]))[0] == "404"
    assert refused(lambda: triton.infer("digitgrad", [pixels_input(strokes(1), True)],
                                        model_version="1"))[0] == "404"

    # A body longer than MAX_TENSOR_IMAGES images can take as JSON is refused before it is
    # parsed. (gunicorn then drops the connection rather than drain more than 64 KiB of an
    # unread body, so this goes last on this client's connection.)
    shape = (MAX_TENSOR_IMAGES, 28, 28)
    assert triton.infer("digitgrad", [pixels_input(np.zeros(shape, np.float32), True)])
    big = pixels_input(np.full((16, 28, 28), 0.123456, np.float32), binary=False)
    status, message = refused(lambda: triton.infer("digitgrad", [big]))
    limit = MAX_TENSOR_IMAGES * v2.IMAGE_JSON_BYTES + FRAMING_BYTES
    assert status == "413" and str(limit) in message

    status, body = request(base + "/metrics")
    text = body.decode()
    for line in ['digitgrad_http_requests_total{method="POST",route="/v2/models/<name>/infer",'
                 'status="400"}',
                 'digitgrad_http_requests_total{method="POST",route="/v2/models/<name>/infer",'
                 'status="413"}',
                 'digitgrad_http_requests_total{method="POST",'
                 'route="/v2/models/<name>/versions/<version>/infer",status="404"}',
                 'digitgrad_stage_duration_seconds_count{route="/v2/models/<name>/infer",'
                 'stage="inference"}']:
        assert line in text, line


def test_mnist_pixels_through_the_client_match_the_in_process_model(
        trained_model_path, mnist_dir, tmp_path):
    from trainer.data import parse_idx, read_bytes

    raw = parse_idx(read_bytes(mnist_dir / "t10k-images-idx3-ubyte.gz"), 2051)
    images = (raw[:64] / np.float32(255)).astype(np.float32)
    model = LoadedModel(trained_model_path)
    expected = model.predict(images)
    with serve(trained_model_path, tmp_path) as (base, _process), \
            httpclient.InferenceServerClient(base.removeprefix("http://")) as triton:
        for start in range(0, len(images), MAX_TENSOR_IMAGES):
            batch = images[start:start + MAX_TENSOR_IMAGES]
            result = triton.infer("digitgrad", [pixels_input(batch, binary=True)])
            np.testing.assert_allclose(result.as_numpy("probabilities"),
                                       expected[start:start + MAX_TENSOR_IMAGES], atol=1e-6)
            assert (result.as_numpy("digit")
                    == expected[start:start + MAX_TENSOR_IMAGES].argmax(1)).all()
