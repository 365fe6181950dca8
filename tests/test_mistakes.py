"""trainer/mistakes.py: the test set's most confident mistakes, each with its evidence."""

from __future__ import annotations

import numpy as np

from autodiff import ComputationGraphNode, no_grad
from models import DeepNetwork, to_model_input
from models.explain import integrated_gradients
from trainer.mistakes import confident_mistakes

PRE = {"mean": 0.1307, "std": 0.3081}


def test_the_most_confident_wrong_answers_come_first_with_their_evidence():
    rng = np.random.default_rng(0)
    model = DeepNetwork(784, 10, 16, 1, rng=rng)
    images = rng.uniform(0, 1, (40, 28, 28)).astype(np.float32)
    with no_grad():
        logits = model(ComputationGraphNode(to_model_input(images, PRE))).value
    predictions = logits.argmax(axis=1)
    labels = predictions.copy()
    wrong = [3, 7, 11, 20, 31]
    labels[wrong] = (predictions[wrong] + 1) % 10
    mistakes = confident_mistakes(model, images, labels, predictions, PRE, count=3)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    confidence = probabilities.max(axis=1)
    expected = sorted(wrong, key=lambda i: -confidence[i])[:3]
    assert [m.index for m in mistakes] == expected
    first = mistakes[0]
    assert np.isclose(first.confidence, confidence[first.index], rtol=1e-5)
    assert (first.label, first.predicted) == (labels[first.index], predictions[first.index])
    np.testing.assert_array_equal(first.evidence, integrated_gradients(
        model, images[first.index], PRE, int(predictions[first.index])).map)
    np.testing.assert_array_equal(first.evidence_for_label, integrated_gradients(
        model, images[first.index], PRE, int(labels[first.index])).map)


def test_no_mistakes_no_gallery():
    model = DeepNetwork(784, 10, 8, 1, rng=np.random.default_rng(1))
    images = np.zeros((3, 28, 28), dtype=np.float32)
    labels = predictions = np.array([1, 2, 3])
    assert confident_mistakes(model, images, labels, predictions, PRE) == []
