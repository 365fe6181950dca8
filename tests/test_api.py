"""The HTTP API through Flask's test client: every endpoint, every error status, the metrics."""

from __future__ import annotations

import base64
import hashlib
import io
import threading
from pathlib import Path

import numpy as np
import pytest
from drawing import digit_png
from PIL import Image

from models import DeepNetwork, preprocessing_config, save
from server import StartupError, create_app, imaging
from server.state import get_serving

REPO = Path(__file__).resolve().parents[1]
SECRET = b"<script>do-not-echo-7f3a</script>"


def blank_png() -> bytes:
    out = io.BytesIO()
    Image.new("L", (40, 40), 255).save(out, format="PNG")
    return out.getvalue()


def upload(data: bytes) -> dict:
    """Multipart form data for /predict: the bytes as the file in the field "image"."""
    return {"image": (io.BytesIO(data), "digit.png")}


def assert_error(response, status: int, code: str) -> dict:
    """The one envelope: JSON, exactly {"error": {"code", "message"}}, nothing echoed."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    text = response.get_data()
    assert b"Traceback" not in text and SECRET not in text and b"<html" not in text.lower()
    return body["error"]


def assert_prediction(body: dict, model_path: Path) -> None:
    probabilities = body["probabilities"]
    assert len(probabilities) == 10 and all(0 <= p <= 1 for p in probabilities)
    assert sum(probabilities) == pytest.approx(1.0, abs=1e-9)
    assert body["digit"] == int(np.argmax(probabilities))
    assert body["confidence"] == max(probabilities)
    assert body["model"] == hashlib.sha256(model_path.read_bytes()).hexdigest()[:12]


# --- /predict -----------------------------------------------------------------------------------


def test_predict_multipart(client, tiny_model_path):
    response = client.post("/predict", data=upload(digit_png()))
    assert response.status_code == 200
    body = response.get_json()
    assert list(body) == ["digit", "confidence", "probabilities", "is_digit", "digit_probability",
                          "model"]
    assert_prediction(body, tiny_model_path)


def test_predict_raw_body_matches_multipart_and_the_model(client, app):
    png = digit_png()
    raw = client.post("/predict", data=png, content_type="image/png").get_json()
    multipart = client.post("/predict", data=upload(png)).get_json()
    assert raw == multipart
    image = imaging.to_mnist(png, max_pixels=10**6)
    expected = get_serving(app).model.predict(image[None])
    np.testing.assert_allclose(raw["probabilities"], expected[0], rtol=1e-12)


def test_predict_debug_image_is_the_28x28_the_model_saw(client):
    png = digit_png()
    body = client.post("/predict?debug=1", data=upload(png)).get_json()
    seen = Image.open(io.BytesIO(base64.b64decode(body["debug_image"])))
    assert seen.size == (28, 28)
    expected = imaging.to_png(imaging.to_mnist(png, max_pixels=10**6))
    assert base64.b64decode(body["debug_image"]) == expected
    assert "debug_image" not in client.post("/predict", data=upload(png)).get_json()


def test_predict_is_thread_safe(app):
    images = [digit_png(size) for size in (40, 64, 100, 150)]
    expected = [app.test_client().post("/predict", data=upload(i)).get_json() for i in images]
    failures = []

    def worker(k: int) -> None:
        client = app.test_client()
        for _ in range(10):
            got = client.post("/predict", data=upload(images[k % 4])).get_json()
            if got != expected[k % 4]:
                failures.append((k, got))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures


# --- /predict/batch -----------------------------------------------------------------------------


def test_batch_answers_in_order_with_per_file_errors(client, tiny_model_path):
    files = [digit_png(64), SECRET, digit_png(100), b"", blank_png()]
    data = {"images": [(io.BytesIO(f), f"f{i}.png") for i, f in enumerate(files)]}
    response = client.post("/predict/batch", data=data)
    assert response.status_code == 200
    assert SECRET not in response.get_data()
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 5
    singles = [client.post("/predict", data=upload(files[i])).get_json() for i in (0, 2)]
    for got, single in zip((predictions[0], predictions[2]), singles):
        assert_prediction(got, tiny_model_path)
        np.testing.assert_allclose(got["probabilities"], single["probabilities"], rtol=1e-5)
    assert [predictions[i]["error"]["code"] for i in (1, 3, 4)] == [
        "invalid_image", "empty_image", "no_digit_found"]


def test_batch_limits_and_errors(make_app):
    client = make_app(MAX_BATCH_FILES=2, MAX_UPLOAD_BYTES=4000).test_client()
    three = {"images": [(io.BytesIO(digit_png()), f"{i}.png") for i in range(3)]}
    assert_error(client.post("/predict/batch", data=three), 413, "too_many_files")
    assert_error(client.post("/predict/batch", data=upload(digit_png())), 400, "missing_field")
    assert_error(client.post("/predict/batch", data=digit_png(), content_type="image/png"),
                 415, "unsupported_media_type")
    big = {"images": [(io.BytesIO(digit_png()), "a.png"), (io.BytesIO(b"x" * 5000), "b.png")]}
    predictions = client.post("/predict/batch", data=big).get_json()["predictions"]
    assert "digit" in predictions[0] and predictions[1]["error"]["code"] == "image_too_large"
    # the body limit of a batch is MAX_BATCH_FILES uploads plus 64 KiB of multipart framing
    huge = {"images": [(io.BytesIO(b"x" * 40_000), f"{i}.png") for i in range(2)]}
    assert_error(client.post("/predict/batch", data=huge), 413, "request_too_large")


# --- errors of /predict -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "status", "code"),
    [
        ({"data": {}, "content_type": "multipart/form-data"}, 400, "missing_field"),
        ({"data": {"other": (io.BytesIO(b"x"), "d.png")}}, 400, "missing_field"),
        ({"data": {"image": "not a file"}, "content_type": "multipart/form-data"}, 400,
         "missing_field"),
        ({"data": upload(b"")}, 400, "empty_image"),
        ({"data": b"", "content_type": "image/png"}, 400, "empty_image"),
        ({"data": upload(SECRET)}, 400, "invalid_image"),
        ({"data": SECRET, "content_type": "image/jpeg"}, 400, "invalid_image"),
        ({"data": digit_png()[:60], "content_type": "image/png"}, 400, "invalid_image"),
        ({"data": SECRET, "content_type": "text/plain"}, 415, "unsupported_media_type"),
        ({"data": digit_png()}, 415, "unsupported_media_type"),  # no Content-Type at all
        ({"data": upload(digit_png(fmt="ICO"))}, 415, "unsupported_format"),
        ({"data": upload(blank_png())}, 422, "no_digit_found"),
    ],
)
def test_predict_client_errors(client, kwargs, status, code):
    assert_error(client.post("/predict", **kwargs), status, code)


def test_too_many_bytes_is_413_multipart_and_raw(make_app):
    client = make_app(MAX_UPLOAD_BYTES=2000).test_client()
    body = SECRET + bytes(3000)
    error = assert_error(client.post("/predict", data=upload(body)), 413, "request_too_large")
    assert "2000" in error["message"]
    assert_error(client.post("/predict", data=body, content_type="image/png"), 413,
                 "request_too_large")


def test_too_many_bytes_without_content_length_is_413(make_app):
    """Chunked bodies, as gunicorn passes them on (input terminated, no Content-Length)."""
    client = make_app(MAX_UPLOAD_BYTES=2000).test_client()

    def post(body: bytes, content_type: str):
        return client.post("/predict", input_stream=io.BytesIO(body), content_type=content_type,
                           environ_overrides={"wsgi.input_terminated": True})

    assert_error(post(bytes(3000), "image/png"), 413, "request_too_large")
    form = (b'--B\r\nContent-Disposition: form-data; name="image"; filename="d.png"\r\n'
            b"Content-Type: image/png\r\n\r\n" + bytes(3000) + b"\r\n--B--\r\n")
    assert_error(post(form, "multipart/form-data; boundary=B"), 413, "request_too_large")
    png = digit_png(30)
    assert len(png) < 2000 and post(png, "image/png").status_code == 200


def test_too_many_pixels_is_413(make_app):
    client = make_app(MAX_IMAGE_PIXELS=1000).test_client()
    assert client.post("/predict", data=upload(digit_png(30))).status_code == 200
    assert_error(client.post("/predict", data=upload(digit_png(64))), 413, "image_too_large")


def test_unknown_path_and_wrong_method(client):
    assert_error(client.get("/nope/" + SECRET.decode()), 404, "not_found")
    response = client.get("/predict")
    error = assert_error(response, 405, "method_not_allowed")
    assert "POST" in response.headers["Allow"] and "POST" in error["message"]
    assert_error(client.delete("/healthz"), 405, "method_not_allowed")


def test_unexpected_error_is_a_bare_500_and_logged(app, client, monkeypatch, caplog):
    def broken(images):
        raise RuntimeError("secret internals")

    monkeypatch.setattr(get_serving(app).model, "answer", broken)
    response = client.post("/predict", data=upload(digit_png()))
    error = assert_error(response, 500, "internal_error")
    assert "secret internals" not in error["message"]
    assert "secret internals" in caplog.text


@pytest.fixture
def broken_model_path(tmp_path) -> Path:
    """A model that loads (finite weights) but overflows to Inf/NaN logits: fails its self-test."""
    model = DeepNetwork(784, 10, 16, 1, rng=np.random.default_rng(0))
    for p in model.parameters():
        p.value[...] = 3e38
    path = tmp_path / "broken.npz"
    # mean -1: every input is positive, so the hidden layer overflows instead of being ReLU'd
    save(model, path, {"preprocessing": preprocessing_config(-1.0, 1.0)})
    return path


def test_failed_self_test_is_503_not_ready(make_app, broken_model_path):
    with np.errstate(all="ignore"):
        client = make_app(MODEL_PATH=str(broken_model_path)).test_client()
        assert client.get("/healthz").status_code == 200
        assert "self-test" in assert_error(client.get("/readyz"), 503, "not_ready")["message"]
        assert_error(client.post("/predict", data=upload(digit_png())), 503, "not_ready")
        assert client.get("/model").get_json()["ready"] is False


def test_a_float64_model_is_served_in_float32(make_app, tmp_path):
    network = DeepNetwork(784, 10, 16, 1, rng=np.random.default_rng(1), dtype=np.float64)
    path = tmp_path / "f64.npz"
    save(network, path, {"preprocessing": preprocessing_config(0.1307, 0.3081)})
    model = get_serving(make_app(MODEL_PATH=str(path))).model
    assert {p.value.dtype for p in model.module.parameters()} == {np.dtype(np.float32)}
    images = np.random.default_rng(2).random((5, 28, 28))
    x = (images.reshape(5, 784) - 0.1307) / 0.3081
    logits = network(x).value
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(model.predict(images), expected, atol=1e-5)


# --- the other endpoints ------------------------------------------------------------------------


def test_healthz_and_readyz(client, tiny_model_path):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json() == {"status": "ready", "model": client.post(
        "/predict", data=upload(digit_png())).get_json()["model"]}


def test_model_describes_the_file(client, tiny_model_path):
    info = client.get("/model").get_json()
    assert info["architecture"] == {"class": "DeepNetwork", "dim_input": 784, "dim_output": 10,
                                    "hidden_dim": 16, "n_layers": 1, "tanh": False}
    assert info["parameters"] == 784 * 16 + 16 + 16 * 10 + 10
    assert info["preprocessing"]["mean"] == pytest.approx(0.1307)
    assert info["sha256"] == hashlib.sha256(tiny_model_path.read_bytes()).hexdigest()
    assert info["id"] == info["sha256"][:12] and info["ready"] is True
    assert info["load_seconds"] >= 0 and info["loaded_at"].endswith("Z")


def scrape(client) -> dict[str, float]:
    """GET /metrics as {'name{labels}': value}."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    samples = {}
    for line in response.get_data(as_text=True).splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


def test_metrics_count_requests_predictions_and_rejections(client):
    # Differences between two scrapes: in multiprocess mode (PROMETHEUS_MULTIPROC_DIR set when
    # prometheus_client was imported) every app of this process shares the counts.
    before = scrape(client)
    body = client.post("/predict", data=upload(digit_png())).get_json()
    client.post("/predict", data=upload(blank_png()))
    client.post("/predict", data=upload(SECRET))
    client.get("/nope")
    after = scrape(client)
    expected = {
        'digitgrad_http_requests_total{method="POST",route="/predict",status="200"}': 1,
        'digitgrad_http_requests_total{method="POST",route="/predict",status="422"}': 1,
        'digitgrad_http_requests_total{method="POST",route="/predict",status="400"}': 1,
        'digitgrad_http_requests_total{method="GET",route="unmatched",status="404"}': 1,
        'digitgrad_http_requests_total{method="GET",route="/metrics",status="200"}': 1,
        f'digitgrad_predictions_total{{digit="{body["digit"]}"}}': 1,
        'digitgrad_rejections_total{reason="no_digit_found"}': 1,
        'digitgrad_rejections_total{reason="invalid_image"}': 1,
        'digitgrad_http_request_duration_seconds_count{route="/predict"}': 3,
        'digitgrad_http_request_duration_seconds_bucket{le="+Inf",route="/predict"}': 3,
    }
    for name, delta in expected.items():
        assert after[name] - before.get(name, 0.0) == delta, name


def test_metrics_time_each_stage_of_a_prediction(client):
    before = scrape(client)
    client.post("/predict", data=upload(digit_png()))
    client.post("/predict/batch", data={"images": [(io.BytesIO(digit_png()), "a.png")] * 2})
    client.post("/predict", data=upload(blank_png()))  # refused in preprocess: not timed after
    after = scrape(client)
    for route, stages in [("/predict", {"decode": 2, "preprocess": 1, "inference": 1,
                                        "encode": 1}),
                          ("/predict/batch", {"decode": 1, "preprocess": 1, "inference": 1,
                                              "encode": 1})]:
        for stage, count in stages.items():
            name = f'digitgrad_stage_duration_seconds_count{{route="{route}",stage="{stage}"}}'
            assert after[name] - before.get(name, 0.0) == count, name


def test_index_serves_the_drawing_page(app, client, tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>draw</title>")
    app.static_folder = str(tmp_path)
    with client.get("/") as response:
        assert response.status_code == 200 and response.mimetype == "text/html"
        assert b"draw" in response.get_data()


def test_static_folder_is_the_package_one(app):
    assert Path(app.static_folder) == REPO / "server" / "static"


# --- start-up -----------------------------------------------------------------------------------


def test_model_path_from_environment_and_config_wins(tiny_model_path, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_PATH", str(tiny_model_path))
    monkeypatch.setenv("MAX_BATCH_FILES", "3")
    app = create_app()
    assert app.config["MODEL_PATH"] == str(tiny_model_path) and app.config["MAX_BATCH_FILES"] == 3
    with pytest.raises(StartupError, match="other.npz: no such file"):
        create_app({"MODEL_PATH": str(tmp_path / "other.npz")})


def test_missing_or_invalid_model_is_a_clear_startup_error(tmp_path):
    with pytest.raises(StartupError, match=r"missing\.npz: no such file"):
        create_app({"MODEL_PATH": str(tmp_path / "missing.npz")})
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not a zip file")
    with pytest.raises(StartupError, match=r"garbage\.npz: not"):
        create_app({"MODEL_PATH": str(garbage)})


@pytest.mark.parametrize("value", ["0", "-5", "lots", ""])
def test_bad_limit_is_a_startup_error(tiny_model_path, monkeypatch, value):
    monkeypatch.setenv("MAX_UPLOAD_BYTES", value)
    with pytest.raises(StartupError, match="MAX_UPLOAD_BYTES must be a positive integer"):
        create_app({"MODEL_PATH": str(tiny_model_path)})


def test_one_prediction_computes_at_a_time_per_worker(app, client, monkeypatch):
    """Concurrent /predict requests take turns in the worker's compute slot (threads trading
    the GIL cost more than waiting), and a route holding it may call helpers that take it."""
    model = get_serving(app).model
    real_predict, inside, overlaps = model.answer, [], []
    lock = threading.Lock()

    def predict(images):
        with lock:
            inside.append(1)
            overlaps.append(len(inside))
        try:
            return real_predict(images)
        finally:
            with lock:
                inside.pop()

    monkeypatch.setattr(model, "answer", predict)
    png = digit_png()
    statuses = []

    def post():
        with app.test_client() as c:
            statuses.append(c.post("/predict", data=png, content_type="image/png").status_code)

    threads = [threading.Thread(target=post) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [200] * 8
    assert max(overlaps) == 1
