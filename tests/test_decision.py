"""models.decision: what a model file's "not a digit" decision turns logits into."""

from __future__ import annotations

import numpy as np
import pytest

from models import ConvNetwork, DeepNetwork, ModelFileError, preprocessing_config, save
from models.decision import Decision, DecisionError, scores
from server.model import LoadedModel


def test_without_a_decision_the_answer_is_the_plain_softmax_and_always_a_digit():
    logits = np.array([[0.0, 1.0] + [0.0] * 8, [5.0] * 10])
    answer = scores(logits, None)
    np.testing.assert_allclose(answer.probabilities.sum(axis=1), 1.0)
    assert answer.is_digit.all()
    np.testing.assert_allclose(answer.digit_probability, 1.0)


def test_probabilities_are_the_eleven_way_softmax_without_renormalising():
    """A doubtful shape keeps a low confidence: nothing is renormalised over the ten digits."""
    logits = np.array([[2.0] + [0.0] * 9 + [6.0],   # mostly "not a digit"
                       [6.0] + [0.0] * 9 + [-3.0]])  # a clear 0
    answer = scores(logits, Decision(threshold=0.0, temperature=2.0))
    z = logits / 2.0
    full = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(answer.probabilities, full[:, :10])
    np.testing.assert_allclose(answer.digit_probability, 1 - full[:, 10])
    # log-odds of "some digit" against "not a digit", at the temperature
    expected_odds = np.log(np.exp(z[:, :10]).sum(axis=1)) - z[:, 10]
    np.testing.assert_allclose(answer.digit_log_odds, expected_odds)
    assert answer.is_digit.tolist() == [False, True]
    assert answer.probabilities[0].max() < 0.3


def test_the_threshold_moves_the_decision_and_nothing_else():
    logits = np.random.default_rng(0).normal(0, 3, (50, 11))
    low, high = (scores(logits, Decision(t, 1.3)) for t in (-2.0, 2.0))
    np.testing.assert_allclose(low.probabilities, high.probabilities)
    assert (low.is_digit >= high.is_digit).all() and low.is_digit.sum() > high.is_digit.sum()


@pytest.mark.parametrize("entry, problem", [
    ({"kind": "energy", "threshold": 1.0}, "decision must be"),
    ({"kind": "not-a-digit-class", "threshold": "high"}, "threshold must be a finite number"),
    ({"kind": "not-a-digit-class", "threshold": 0.5, "temperature": 0}, "temperature must be"),
    ({"kind": "not-a-digit-class", "threshold": float("nan")}, "threshold must be a finite"),
])
def test_a_malformed_decision_says_what_is_wrong(entry, problem):
    with pytest.raises(DecisionError, match=problem):
        Decision.from_metadata({"decision": entry}, 11)


def test_a_decision_must_fit_the_model_outputs():
    with pytest.raises(DecisionError, match="needs 11 outputs"):
        Decision.from_metadata({"decision": Decision(0.0).to_metadata()}, 10)
    with pytest.raises(DecisionError, match="11 outputs but no decision"):
        Decision.from_metadata({}, 11)
    assert Decision.from_metadata({}, 10) is None


def test_the_served_model_reads_the_decision_and_old_files_never_refuse(tmp_path):
    rng = np.random.default_rng(0)
    old = tmp_path / "old.npz"
    save(DeepNetwork(784, 10, 16, 1, rng=rng), old,
         {"preprocessing": preprocessing_config(0.1307, 0.3081)})
    loaded = LoadedModel(old)
    assert loaded.decision is None and loaded.self_test()
    noise = rng.random((5, 28, 28))
    assert loaded.answer(noise).is_digit.all()
    np.testing.assert_allclose(loaded.predict(noise).sum(axis=1), 1.0)

    new = tmp_path / "new.npz"
    save(ConvNetwork(dim_output=11, channels=(4, 8), hidden_dims=(16,), rng=rng), new,
         {"preprocessing": preprocessing_config(0.1307, 0.3081),
          "decision": Decision(50.0, 1.0).to_metadata()})  # refuses everything
    loaded = LoadedModel(new)
    assert loaded.decision == Decision(50.0, 1.0) and loaded.self_test()
    assert not loaded.answer(noise).is_digit.any()
    assert loaded.info()["decision"]["threshold"] == 50.0

    broken = tmp_path / "broken.npz"
    save(ConvNetwork(dim_output=11, channels=(4, 8), hidden_dims=(16,), rng=rng), broken,
         {"preprocessing": preprocessing_config(0.1307, 0.3081)})
    with pytest.raises(ModelFileError, match="11 outputs but no decision"):
        LoadedModel(broken)
