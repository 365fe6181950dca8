"""Is it a digit at all? The decision a model file carries beside its weights.

A model trained with "not a digit" examples has one more output than it has digits: its last
logit scores "not a digit". The trainer writes what turns its logits into answers into the
model file's metadata (``metadata["decision"]``), so the trainer, the server and the ONNX
export decide alike:

- ``temperature``: the logits are divided by it before the softmax (fitted on validation
  images, so that a confidence of 0.9 is right about 90% of the time);
- ``threshold``: the least log-odds of "some digit" against "not a digit",
  ``log(sum_k exp(z_k / T)) - z_not / T``, for which the model answers with a digit; set by
  the trainer on degraded digits (thin pens, blocky scans), so that real digits pass.

The answer's probabilities are the softmax over all outputs, the last one left out: the
probability of each digit, which sum to the probability of "a digit". Nothing is renormalised
over fewer classes, so the confidence of a digit stays the probability that the answer is right
(that of a doubtful shape stays low). A file without a decision (every model before it) gives
the plain softmax over its ten outputs and calls everything a digit, as before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: The decision's format in model files: {"kind": KIND, "threshold": ..., "temperature": ...}.
KIND = "not-a-digit-class"
DIGITS = 10


class DecisionError(ValueError):
    """A model file's ``metadata["decision"]`` cannot be used; the message says what is wrong."""


@dataclass(frozen=True)
class Decision:
    """How logits of a model with a "not a digit" output (the last one) become answers."""

    threshold: float
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if not (isinstance(self.threshold, (int, float)) and math.isfinite(self.threshold)):
            raise DecisionError(f"decision threshold must be a finite number, got "
                                f"{self.threshold!r}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise DecisionError(f"decision temperature must be a positive number, got "
                                f"{self.temperature!r}")

    def to_metadata(self) -> dict:
        """The JSON-able form stored in ``metadata["decision"]``."""
        return {"kind": KIND, "threshold": float(self.threshold),
                "temperature": float(self.temperature)}

    @classmethod
    def from_metadata(cls, metadata: dict, outputs: int) -> Decision | None:
        """The decision of a model file's metadata, None when it has none (older files);
        DecisionError when it is malformed or does not fit a model of ``outputs`` outputs."""
        entry = metadata.get("decision")
        if entry is None:
            if outputs != DIGITS:
                raise DecisionError(f"the model has {outputs} outputs but no decision; "
                                    f"expected {DIGITS}")
            return None
        if not isinstance(entry, dict) or entry.get("kind") != KIND:
            raise DecisionError(f'decision must be {{"kind": "{KIND}", "threshold": ..., '
                                f'"temperature": ...}}, got {entry!r}')
        if outputs != DIGITS + 1:
            raise DecisionError(f"a {KIND} decision needs {DIGITS + 1} outputs (the last: not "
                                f"a digit); the model has {outputs}")
        return cls(threshold=entry.get("threshold"), temperature=entry.get("temperature", 1.0))


@dataclass
class Scores:
    """Answers for a batch: per-digit probabilities (N, 10), which sum to
    ``digit_probability`` (N,); ``is_digit`` (N,) is the decision; ``digit_log_odds`` (N,)."""

    probabilities: np.ndarray
    digit_probability: np.ndarray
    digit_log_odds: np.ndarray
    is_digit: np.ndarray


def _log_sum_exp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1)
    return top + np.log(np.exp(z - top[:, None]).sum(axis=1))


def scores(logits: np.ndarray, decision: Decision | None) -> Scores:
    """The answers of ``logits`` (N, 10) or, with a decision, (N, 11); in float64."""
    z = np.asarray(logits, dtype=np.float64)
    n = len(z)
    if decision is None:
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return Scores(e / e.sum(axis=1, keepdims=True), np.ones(n), np.full(n, np.inf),
                      np.ones(n, dtype=bool))
    z = z / decision.temperature
    total = _log_sum_exp(z)
    probabilities = np.exp(z[:, :DIGITS] - total[:, None])
    log_odds = _log_sum_exp(z[:, :DIGITS]) - z[:, DIGITS]
    digit_probability = probabilities.sum(axis=1)
    return Scores(probabilities, digit_probability, log_odds, log_odds >= decision.threshold)
