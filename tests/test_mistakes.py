"""trainer/mistakes.py: the test set's most confident mistakes, each with its evidence."""

from __future__ import annotations

import numpy as np

from autodiff import ComputationGraphNode, no_grad
from models import DeepNetwork, to_model_input
from models.decision import Decision, scores
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
    # an eleven-output model's answers with a temperature: the gallery's confidence is the
    # answer's as the decision gives it, not a plain softmax of the logits
    eleven = np.concatenate([logits, np.full((len(logits), 1), -1.0)], axis=1)
    answers = scores(eleven, Decision(threshold=0.0, temperature=2.5))
    confidence = answers.probabilities.max(axis=1)
    mistakes = confident_mistakes(model, images, labels, predictions, confidence, PRE, count=3)
    expected = sorted(wrong, key=lambda i: -confidence[i])[:3]
    assert [m.index for m in mistakes] == expected
    first = mistakes[0]
    assert first.confidence == confidence[first.index]
    plain = np.exp(logits[first.index] - logits[first.index].max())
    assert first.confidence < (plain / plain.sum()).max()  # the temperature softens it
    assert (first.label, first.predicted) == (labels[first.index], predictions[first.index])
    np.testing.assert_array_equal(first.evidence, integrated_gradients(
        model, images[first.index], PRE, int(predictions[first.index])).map)
    np.testing.assert_array_equal(first.evidence_for_label, integrated_gradients(
        model, images[first.index], PRE, int(labels[first.index])).map)


def test_no_mistakes_no_gallery():
    model = DeepNetwork(784, 10, 8, 1, rng=np.random.default_rng(1))
    images = np.zeros((3, 28, 28), dtype=np.float32)
    labels = predictions = np.array([1, 2, 3])
    assert confident_mistakes(model, images, labels, predictions, np.ones(3), PRE) == []
