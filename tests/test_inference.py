"""The inference service on its own (the routes' use of it is tested through them): per-file
errors of a batch, a refused file stopping the request, the slot held once per request."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from drawing import digit_png

from server import imaging
from server.inference import EmptyImage, Prediction
from server.state import get_serving


@pytest.fixture
def serving(app):
    """The app's serving state, inside a request context (the stage metrics name the route)."""
    with app.test_request_context("/predict/batch", method="POST"):
        yield get_serving(app)


def counted(serving) -> list:
    """Every forward pass's batch size, as the service runs them."""
    batches = []
    forward = serving.inference.forward

    def spy(model, images):
        batches.append(len(images))
        return forward(model, images)

    serving.inference.forward = spy
    return batches


def test_a_batch_keeps_each_refused_file_in_its_place(serving):
    batches = counted(serving)
    results = serving.inference.predict_files(serving.model, [digit_png(), b"", b"junk",
                                                              digit_png(40)])
    assert batches == [2], "the readable files go through the model together"
    assert [type(r) for r in results] == [Prediction, EmptyImage, imaging.InvalidImage,
                                          Prediction]
    first = results[0]
    assert first.image.shape == (28, 28) and first.probabilities.shape == (10,)
    assert first.digit == int(np.argmax(first.probabilities)) and first.label is None
    assert first.confidence == pytest.approx(first.probabilities.max())
    assert first.model_id == serving.model.model_id


def test_refused_may_stop_the_request_before_any_forward_pass(serving):
    batches = counted(serving)

    class StopError(Exception):
        pass

    def refused(index, error):
        raise StopError(index, error.code)

    with pytest.raises(StopError) as stopped:
        serving.inference.predict_files(serving.model, [digit_png(), b"junk", b""],
                                        refused=refused)
    assert stopped.value.args == (1, "invalid_image") and batches == []


def test_the_slot_is_taken_once_per_request_and_given_back(app, serving):
    """The slot is not re-entrant: taking it twice in one request, or keeping it after one,
    would hang the second call below."""
    done = threading.Event()

    def requests():
        with app.test_request_context("/predict/number", method="POST"):
            serving.inference.predict_number(serving.model, digit_png())
            serving.inference.predict_files(serving.model, [digit_png(), b""])
            serving.inference.predict_file(serving.model, digit_png())
        done.set()

    threading.Thread(target=requests, daemon=True).start()
    assert done.wait(timeout=60), "the service waits for its own compute slot"
