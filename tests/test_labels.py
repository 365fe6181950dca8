"""Class names: models that name their classes (Fashion-MNIST) answer ``label`` beside the index;
MNIST models and files written before class names existed (format version 1) keep the old shape."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from drawing import digit_png

import trainer.__main__ as cli
from models import ConvNetwork, DeepNetwork, ModelFileError, load, preprocessing_config, save
from models.archive import META_KEY
from server import create_app
from trainer.data import DATASETS

FASHION = list(DATASETS["fashion-mnist"].classes)
PREPROCESSING = preprocessing_config(0.2860, 0.3530)


def small_cnn() -> ConvNetwork:
    return ConvNetwork(channels=(2, 4), hidden_dims=(8,), rng=np.random.default_rng(0))


def predict(model_path: Path, *paths: str) -> dict:
    """POST /predict (and GET the other ``paths``) on an app serving ``model_path``."""
    client = create_app({"MODEL_PATH": str(model_path)}).test_client()
    answers = {"/predict": client.post(
        "/predict", data={"image": (io.BytesIO(digit_png()), "x.png")}).get_json()}
    for path in paths:
        answers[path] = client.get(path).get_json()
    return answers


def test_a_model_with_class_names_answers_labels(tmp_path):
    path = tmp_path / "fashion.npz"
    save(small_cnn(), path, {"preprocessing": PREPROCESSING, "classes": FASHION})
    answers = predict(path, "/model")
    body = answers["/predict"]
    assert list(body)[:2] == ["digit", "label"]  # the name right beside the index
    assert body["label"] == FASHION[body["digit"]]
    assert answers["/model"]["classes"] == FASHION
    assert answers["/model"]["architecture"]["class"] == "ConvNetwork"


def test_batch_predictions_carry_labels_too(tmp_path):
    path = tmp_path / "fashion.npz"
    save(small_cnn(), path, {"preprocessing": PREPROCESSING, "classes": FASHION})
    client = create_app({"MODEL_PATH": str(path)}).test_client()
    files = [(io.BytesIO(digit_png()), f"{i}.png") for i in range(2)]
    entries = client.post("/predict/batch", data={"images": files}).get_json()["predictions"]
    assert [e["label"] for e in entries] == [FASHION[e["digit"]] for e in entries]


def test_mnist_models_answer_without_label(tmp_path):
    """The digit is its own name: no label, so MNIST answers keep their shape."""
    path = tmp_path / "mnist.npz"
    save(small_cnn(), path, {"preprocessing": PREPROCESSING})
    answers = predict(path, "/model")
    assert list(answers["/predict"]) == ["digit", "confidence", "probabilities", "is_digit",
                                         "digit_probability", "model"]
    assert "classes" not in answers["/model"]


def test_a_version_1_mlp_file_still_loads_and_serves(tmp_path):
    """A model file as digitgrad 0.1 wrote it (format version 1), built by hand."""
    model = DeepNetwork(784, 10, 16, 1, rng=np.random.default_rng(0))
    meta = {"format": "digitgrad", "format_version": 1, "kind": "model",
            "architecture": model.config(), "dtype": "float32",
            "metadata": {"preprocessing": PREPROCESSING}}
    path = tmp_path / "v1.npz"
    np.savez(path, **model.state_dict(), **{META_KEY: np.array(json.dumps(meta))})
    answers = predict(path, "/readyz", "/model")
    assert answers["/readyz"]["status"] == "ready"
    assert list(answers["/predict"]) == ["digit", "confidence", "probabilities", "is_digit",
                                         "digit_probability", "model"]
    assert answers["/model"]["architecture"] == model.config()


@pytest.mark.parametrize("classes", [["a"] * 9, "abcdefghij", [""] * 10, [1] * 10])
def test_malformed_class_names_are_refused_at_load(tmp_path, classes):
    from server.model import LoadedModel

    path = tmp_path / "bad.npz"
    save(small_cnn(), path, {"preprocessing": PREPROCESSING, "classes": classes})
    with pytest.raises(ModelFileError, match="classes must be a list of 10 non-empty strings"):
        LoadedModel(path)


def test_short_fashion_mnist_training_learns_and_serves_labels(tmp_path):
    """A few seconds of training on Debian's Fashion-MNIST: far above chance, names recorded."""
    directory = Path(DATASETS["fashion-mnist"].system_dir)
    if not (directory / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST is not installed in {directory} "
                    "(apt install dataset-fashion-mnist)")
    out = tmp_path / "fashion.npz"
    argv = ["--dataset", "fashion-mnist", "--train-size", "6000", "--epochs", "2",
            "--channels", "4,8", "--hidden-dims", "32", "--out", str(out),
            "--checkpoint-dir", str(tmp_path / "ck"), "--no-download", "--quiet"]
    assert cli.main(argv) == 0
    model, meta = load(out)
    assert meta["dataset"] == "fashion-mnist" and meta["classes"] == FASHION
    assert meta["training"]["augment"] is False  # digit augmentation is off for clothing
    assert meta["metrics"]["test_accuracy"] >= 0.70  # chance is 0.10; this run: 0.74
    body = predict(out)["/predict"]
    assert body["label"] in FASHION and body["label"] == FASHION[body["digit"]]
