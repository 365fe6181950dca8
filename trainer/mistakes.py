"""The test set's most confident mistakes, each explained by integrated gradients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodiff import ComputationGraphNode, no_grad
from models import Module, to_model_input
from models.explain import integrated_gradients

#: Mistakes in the trainer's gallery (--plots): a 4x4 grid.
GALLERY_SIZE = 16


@dataclass(frozen=True)
class Mistake:
    """One wrong answer: the image, what it is, what the model said and why."""

    index: int  # in the test set
    image: np.ndarray  # (28, 28) in [0, 1]
    label: int
    predicted: int
    confidence: float  # softmax probability of ``predicted``
    evidence: np.ndarray  # integrated gradients of the predicted class's logit, (28, 28)
    evidence_for_label: np.ndarray  # and of the true class's logit


def confident_mistakes(model: Module, images: np.ndarray, labels: np.ndarray,
                       predictions: np.ndarray, preprocessing: dict | None,
                       count: int = GALLERY_SIZE) -> list[Mistake]:
    """The ``count`` wrong predictions with the highest confidence, most confident first."""
    wrong = np.flatnonzero(predictions != labels)
    if not len(wrong):
        return []
    with no_grad():  # only the wrong images: a few dozen for a good model
        logits = model(ComputationGraphNode(to_model_input(images[wrong], preprocessing))).value
    logits = logits.astype(np.float64)
    probabilities = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    confidence = probabilities[np.arange(len(wrong)), predictions[wrong]]
    chosen = np.argsort(-confidence, kind="stable")[:count]
    mistakes = []
    for k in chosen:
        i = int(wrong[k])
        image = np.asarray(images[i], dtype=np.float32)
        mistakes.append(Mistake(
            index=i, image=image, label=int(labels[i]), predicted=int(predictions[i]),
            confidence=float(confidence[k]),
            evidence=integrated_gradients(model, image, preprocessing, int(predictions[i])).map,
            evidence_for_label=integrated_gradients(model, image, preprocessing,
                                                    int(labels[i])).map,
        ))
    return mistakes
