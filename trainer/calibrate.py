"""After training: the temperature and the "not a digit" threshold, from held-out images.

Both come from images the model never trained on: the validation digits as they are, the
same digits degraded the ways uploads are (blocky low-resolution scans, binarised pen-like
strokes, blur), digits drawn with a pen (trainer.synthetic, from a stream training never
draws from) and "not a digit" examples from that stream too. The temperature minimises the
negative log-likelihood of all of them; the threshold lets through all but ``REFUSE_DIGITS``
of the degraded and pen-drawn digits, because refusing a real digit is the worse mistake: a
clean-MNIST threshold refused a tenth of real handwriting in a first experiment (issue 21).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from autodiff import ComputationGraphNode, no_grad
from models import to_model_input
from models.decision import DIGITS, Decision, scores
from trainer.augment import lowres_matrix
from trainer.config import DEFAULT_REFUSE_DIGITS
from trainer.synthetic import KINDS, not_digits, pen_digits

#: How ``degrade`` degrades validation digits, each image one way in turn.
DEGRADATIONS = ("blocky", "lowres", "binary", "blur")
#: The groups the threshold is set on, the degraded digits and the pen-drawn ones: uploads look
#: like them, and refusing one is the worse mistake.
HARD_GROUPS = (*DEGRADATIONS, "pen")
#: Images of each group (validation digits as they are and degraded, pen digits, not-digits):
#: the threshold is a low quantile of the hard digits' scores, steadier from more of them
#: (docs/benchmarks.md, "Typed letters and digits").
CALIBRATION_COUNT = 5000
#: The validation stream's key ("vali"): never one of training's streams.
CALIBRATION_STREAM = 0x76616C69
TEMPERATURES = np.exp(np.linspace(np.log(0.5), np.log(4.0), 61))


def logits_of(model, images: np.ndarray, preprocessing: dict, batch: int = 500) -> np.ndarray:
    """The model's logits (N, outputs) for images (N, 28, 28), without a graph."""
    out = []
    with no_grad():
        for i in range(0, len(images), batch):
            x = to_model_input(images[i:i + batch], preprocessing)
            out.append(model(ComputationGraphNode(x)).value)
    return np.concatenate(out).astype(np.float64)


def degrade(images: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    """Each image degraded one way in turn: a blocky scan (8-14 px, nearest), a smooth
    low-resolution scan (bilinear), binarised ink (a pen's hard edges), or blur."""
    out = np.empty_like(images)
    kinds = []
    for i, image in enumerate(images):
        kind = DEGRADATIONS[i % len(DEGRADATIONS)]
        if kind in ("blocky", "lowres"):
            m = lowres_matrix(int(rng.integers(8, 15)), nearest=kind == "blocky")
            image = m @ image @ m.T
        elif kind == "binary":
            image = (image > rng.uniform(0.3, 0.6)).astype(np.float32)
        else:
            k = np.array([1, 4, 6, 4, 1], dtype=np.float32) / 16
            image = np.apply_along_axis(np.convolve, 0, image, k, "same")
            image = np.apply_along_axis(np.convolve, 1, image, k, "same")
            image = image / max(float(image.max()), 1e-6)
        out[i] = np.clip(image, 0, 1)
        kinds.append(kind)
    return out, kinds


@dataclass
class CalibrationSet:
    """Held-out images with labels (10: not a digit) and the name of the group each is in."""

    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray


def calibration_set(val_images: np.ndarray, val_labels: np.ndarray, seed: int,
                    count: int = CALIBRATION_COUNT) -> CalibrationSet:
    """Validation digits (clean and degraded), pen-drawn digits and not-digits, ``count``
    of each (at most as many as there are validation digits), from the calibration stream of
    ``seed``."""
    rng = np.random.default_rng([seed, CALIBRATION_STREAM])
    count = min(count, len(val_labels))
    pick = rng.choice(len(val_labels), count, replace=False)
    clean = val_images[pick]
    degraded, kinds = degrade(clean, rng)
    pen, pen_labels = pen_digits(count, rng)
    negatives, kind_index = not_digits(count, rng)
    images = np.concatenate([clean, degraded, pen, negatives])
    labels = np.concatenate([val_labels[pick], val_labels[pick], pen_labels,
                             np.full(count, DIGITS)])
    groups = np.array(["mnist"] * len(pick) + kinds + ["pen"] * count
                      + [f"not:{list(KINDS)[k]}" for k in kind_index])
    return CalibrationSet(images, labels, groups)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature of least negative log-likelihood (a grid over 0.5-4)."""
    best, best_nll = 1.0, np.inf
    rows = np.arange(len(labels))
    for t in TEMPERATURES:
        z = logits / t
        top = z.max(axis=1, keepdims=True)
        log_p = z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))
        nll = -log_p[rows, labels].mean()
        if nll < best_nll:
            best, best_nll = float(t), nll
    return best


def calibrate(model, data: CalibrationSet, preprocessing: dict,
              refuse_digits: float = DEFAULT_REFUSE_DIGITS) -> tuple[Decision, dict]:
    """The decision for ``model``, whose threshold refuses ``refuse_digits`` of the degraded
    and pen-drawn digits of ``data``, and what it does on each group of ``data``."""
    logits = logits_of(model, data.images, preprocessing)
    temperature = fit_temperature(logits, data.labels)
    odds = scores(logits, Decision(0.0, temperature)).digit_log_odds
    hard = np.isin(data.groups, HARD_GROUPS)
    threshold = float(np.quantile(odds[hard], refuse_digits))
    decision = Decision(round(threshold, 4), round(temperature, 4))
    refused = ~scores(logits, decision).is_digit
    report = {group: round(float(refused[data.groups == group].mean()), 4)
              for group in sorted(set(data.groups))}
    return decision, {"refused": report}
