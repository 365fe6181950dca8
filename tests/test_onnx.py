"""ONNX export: onnxruntime gives our engine's probabilities, preprocessing included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from models import (
    NETWORKS,
    ConvNetwork,
    DeepNetwork,
    LinearNetwork,
    preprocessing_config,
    save,
)
from server.model import LoadedModel

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from models.onnx_export import EXPORTERS, OPSET, main  # noqa: E402  (needs onnx)

TOLERANCE = 1e-5


def architectures(rng: np.random.Generator) -> dict:
    """One network of every kind the trainer can write, plus variants that change the graph."""
    return {
        "linear": LinearNetwork(784, 10, rng=rng),
        "deep-relu": DeepNetwork(784, 10, 32, 2, rng=rng),
        "deep-tanh": DeepNetwork(784, 10, 16, 1, tanh=True, rng=rng),
        "conv-lenet": ConvNetwork(rng=rng),
        # pool 3 leaves a remainder (28 -> 9): the exported MaxPool must floor like ours
        "conv-pool3": ConvNetwork(channels=(4,), kernel_sizes=(3,), paddings=(1,), pool=3,
                                  hidden_dims=(8,), rng=rng),
    }


def export_and_session(network, tmp_path: Path, preprocessing: dict | None):
    model_path, onnx_path = tmp_path / "model.npz", tmp_path / "model.onnx"
    save(network, model_path, {"preprocessing": preprocessing} if preprocessing else {})
    assert main([str(model_path), str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return LoadedModel(model_path), session, onnx_path


def assert_same(loaded: LoadedModel, session, images: np.ndarray) -> float:
    """Same probabilities within TOLERANCE and the same digits; the largest difference."""
    probabilities, digits = session.run(["probabilities", "digit"],
                                        {"pixels": images.astype(np.float32)})
    # in batches: a convolution's patches for 10,000 images at once would take ~1 GB
    expected = np.concatenate([loaded.predict(images[i:i + 1000])
                               for i in range(0, len(images), 1000)])
    diff = np.abs(probabilities - expected)
    worst = np.unravel_index(diff.argmax(), diff.shape)
    assert diff.max() <= TOLERANCE, (
        f"image {worst[0]}, class {worst[1]}: engine {expected[worst]}, "
        f"onnxruntime {probabilities[worst]}")
    # argmax may differ only between classes whose probabilities tie within the tolerance
    top = np.sort(expected, axis=1)
    clear = top[:, -1] - top[:, -2] > 2 * TOLERANCE
    assert (digits[clear] == expected.argmax(axis=1)[clear]).all()
    assert digits.dtype == np.int64 and probabilities.dtype == np.float32
    return float(diff.max())


def test_every_architecture_models_can_build_has_an_exporter():
    assert set(NETWORKS.values()) == set(EXPORTERS)


@pytest.mark.parametrize("kind", list(architectures(np.random.default_rng(0))))
@pytest.mark.parametrize("normalised", [True, False])
def test_onnxruntime_matches_the_engine_on_random_pixels(tmp_path, kind, normalised):
    rng = np.random.default_rng(1)
    network = architectures(rng)[kind]
    preprocessing = preprocessing_config(0.1307, 0.3081) if normalised else None
    loaded, session, onnx_path = export_and_session(network, tmp_path, preprocessing)
    images = rng.random((33, 28, 28))
    images[0] = 0.0  # a blank page too
    assert_same(loaded, session, images)

    model = onnx.load(str(onnx_path))
    assert model.opset_import[0].version == OPSET >= 13
    assert [i.name for i in model.graph.input] == ["pixels"]
    assert [o.name for o in model.graph.output] == ["probabilities", "digit"]
    props = {p.key: p.value for p in model.metadata_props}
    assert props["digitgrad.sha256"] == loaded.sha256


def test_an_unknown_architecture_is_refused_with_what_to_do(tmp_path, monkeypatch, capsys):
    path = tmp_path / "model.npz"
    save(LinearNetwork(784, 10, rng=np.random.default_rng(0)), path)
    monkeypatch.delitem(EXPORTERS, LinearNetwork)
    assert main([str(path), str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no ONNX export for LinearNetwork" in err[0]
    assert not (tmp_path / "out.onnx").exists()


def test_a_missing_model_file_is_one_line(tmp_path, capsys):
    assert main([str(tmp_path / "nowhere.npz"), str(tmp_path / "out.onnx")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere.npz" in err[0] and "no such file" in err[0]


@pytest.mark.parametrize("kind", ["trained-mlp", "conv-lenet"])
def test_onnxruntime_matches_the_engine_on_the_mnist_test_set(tmp_path, mnist_dir, kind,
                                                               request):
    from trainer.data import load_idx_dir

    images = load_idx_dir(mnist_dir).test.images
    if kind == "trained-mlp":  # the trainer's own model file, as the trainer wrote it
        model_path = request.getfixturevalue("trained_model_path")
        onnx_path = tmp_path / "model.onnx"
        assert main([str(model_path), str(onnx_path)]) == 0
        loaded = LoadedModel(model_path)
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    else:
        network = architectures(np.random.default_rng(2))[kind]
        loaded, session, _ = export_and_session(
            network, tmp_path, preprocessing_config(0.1307, 0.3081))
    assert len(images) == 10_000
    assert_same(loaded, session, images)


def test_a_not_a_digit_decision_is_exported_as_the_server_decides(tmp_path):
    """Temperature, probabilities over eleven outputs, is_digit and digit_probability: the
    same numbers from onnxruntime as from the served model, on both sides of the threshold."""
    from models.decision import Decision

    rng = np.random.default_rng(3)
    network = ConvNetwork(dim_output=11, channels=(4, 8), hidden_dims=(16,), rng=rng)
    images = rng.random((64, 28, 28))
    model_path, onnx_path = tmp_path / "model.npz", tmp_path / "model.onnx"
    # a threshold at the median log-odds: half the images are refused
    save(network, model_path, {"preprocessing": preprocessing_config(0.1307, 0.3081),
                               "decision": Decision(0.0, 1.7).to_metadata()})
    median = float(np.median(LoadedModel(model_path).answer(images).digit_log_odds))
    save(network, model_path, {"preprocessing": preprocessing_config(0.1307, 0.3081),
                               "decision": Decision(median, 1.7).to_metadata()})
    assert main([str(model_path), str(onnx_path)]) == 0
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    assert names == ["probabilities", "digit", "is_digit", "digit_probability"]
    got = dict(zip(names, session.run(None, {"pixels": images.astype(np.float32)})))
    expected = LoadedModel(model_path).answer(images)
    np.testing.assert_allclose(got["probabilities"], expected.probabilities, atol=TOLERANCE)
    np.testing.assert_allclose(got["digit_probability"], expected.digit_probability,
                               atol=TOLERANCE)
    near = np.abs(expected.digit_log_odds - median) < 1e-4  # a float32 tie may go either way
    assert (got["is_digit"][~near] == expected.is_digit[~near]).all()
    assert 0 < expected.is_digit.sum() < len(images)
    assert (got["digit"] == expected.probabilities.argmax(axis=1)).all()
    props = {p.key: p.value for p in onnx.load(str(onnx_path)).metadata_props}
    assert '"threshold"' in props["digitgrad.decision"]
