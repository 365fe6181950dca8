"""The one inference service under both protocols: image files or pixels -> Predictions.

The PyTorch Flask tutorial's ``transform_image`` -> ``get_prediction``, shared: /predict,
/predict/batch and /predict/number (``server.api``) and /v2 (``server.v2``) read their requests,
call one method here per request, and shape the Predictions into their own JSON. No Flask and
no HTTP statuses here; errors are ``imaging.ImageError``s, whose codes ``server.errors`` maps.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from models.decision import Scores
from server import imaging
from server.imaging.segment import Box
from server.metrics import Metrics
from server.model import LoadedModel

#: Digits one written number may hold (more is answered 422 too_many_digits).
MAX_NUMBER_DIGITS = 12
#: Images per forward pass of a large pixels batch: the activations of a chunk are what a
#: request holds at once (the CNN's first layer: 64 x 32 x 28 x 28 float32, 6.4 MB), and the
#: compute slot is taken per chunk, so other requests get their turns between chunks.
PREDICT_CHUNK = 64


class Busy(Exception):  # noqa: N818 - the API's names for the answers
    """As many requests as may already hold or wait for this worker's compute slots."""

    code = "overloaded"
    #: Seconds a client should wait before sending again (HTTP's Retry-After).
    retry_after = 1

    def __init__(self):
        super().__init__(f"The server is busy; send the request again in {self.retry_after} s.")


class ComputeSlots:
    """``slots`` compute slots per worker, handed to waiting threads in the order they asked,
    with at most ``max_waiting`` threads waiting: one more raises Busy at once (a context
    manager). threading.Semaphore lets a thread that just arrived take a slot before the one
    woken for it, which then queues again at the back: under load some requests waited
    seconds while others passed them (docs/benchmarks.md). Here a released slot goes straight
    to the longest waiting thread.
    """

    def __init__(self, slots: int, max_waiting: int) -> None:
        self.capacity = slots + max_waiting  #: requests holding or waiting for a slot, at most
        self._free = slots
        self._in_line = 0
        self._lock = threading.Lock()
        self._waiting: deque[threading.Lock] = deque()

    def full(self) -> bool:
        """Whether a request asking for a slot now would be refused."""
        return self._in_line >= self.capacity

    def __enter__(self) -> None:
        with self._lock:
            if self._in_line >= self.capacity:
                raise Busy()
            self._in_line += 1
            if self._free and not self._waiting:
                self._free -= 1
                return
            turn = threading.Lock()
            turn.acquire()
            self._waiting.append(turn)
        turn.acquire()  # released by __exit__ when this thread's turn comes: the slot is ours

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._in_line -= 1
            if self._waiting:
                self._waiting.popleft().release()  # handed over, still taken
            else:
                self._free += 1


class EmptyImage(imaging.ImageError):  # noqa: N818 - the API's names for the answers
    """An upload of no bytes at all: told apart from an undecodable one."""

    code = "empty_image"

    def __init__(self):
        super().__init__("The uploaded image is empty.")


def _model_answer(model: LoadedModel, images: np.ndarray) -> Scores:
    """The default ``forward``: the loaded model's own ``answer``."""
    return model.answer(images)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 7x, per image of a batch
class Prediction:
    """One image's answer, which each protocol shapes into its JSON.

    A new per-image answer (whether the image is a digit at all, attributions over ``image``)
    is a new field here, filled in by ``Inference._predict``.
    """

    image: np.ndarray  #: float32 (28, 28), the image the model saw
    #: float64 (10,): each digit's probability; they sum to ``digit_probability``
    probabilities: np.ndarray
    digit: int
    label: str | None  #: the class name, when the model file names its classes
    model_id: str
    #: the model file's decision (models.decision): is it a digit at all, and how sure;
    #: a model without one calls everything a digit (probability 1)
    is_digit: bool = True
    digit_probability: float = 1.0
    #: float32 (28, 28) over ``image``: integrated gradients of ``digit``, when asked for
    attributions: np.ndarray | None = None

    @property
    def confidence(self) -> float:
        """The predicted class's probability."""
        return float(self.probabilities[self.digit])


class Inference:
    """Reads image files to 28x28 within the app's limits, runs the model, makes Predictions,
    and counts the predicted digits. Each method is one request's work: it holds one of the
    worker's compute slots (``server.state.COMPUTE_SLOTS``) from the first image read to the
    last prediction, and times the "preprocess", "inference" and "explain" stages. Methods
    taking ``explain=True`` add each image's attributions (``LoadedModel.explain``) in the same
    slot; without it the model runs forward only.

    The work itself is three attributes, set at construction: ``transform`` (file -> 28x28,
    ``imaging.to_mnist``), ``transform_number`` (file -> one 28x28 and box per digit,
    ``imaging.to_mnist_digits``) and ``forward`` ((model, images) -> ``models.decision.Scores``,
    ``model.answer``). That is the service's seam: bench/floor_gunicorn.conf.py replaces
    them with constants to measure the service without its work. Nothing else should.
    """

    def __init__(self, metrics: Metrics, *, compute_slots: int, max_queued: int,
                 max_upload_bytes: int, max_pixels: int,
                 transform: Callable[..., np.ndarray] = imaging.to_mnist,
                 transform_number: Callable[..., list[tuple[np.ndarray, Box]]]
                 = imaging.to_mnist_digits,
                 forward: Callable[[LoadedModel, np.ndarray], Scores] = _model_answer):
        self.metrics = metrics
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.transform = transform
        self.transform_number = transform_number
        self.forward = forward
        #: Taken per request (per chunk of a pixels batch); Busy when max_queued wait already.
        self.slots = ComputeSlots(compute_slots, max_queued)

    def predict_file(self, model: LoadedModel, data: bytes, *,
                     explain: bool = False) -> Prediction:
        """One image file's digit (/predict)."""
        with self.slots:
            with self.metrics.stage("preprocess"):
                image = self._read(data)
            return self._predict(model, image[None], explain)[0]

    def predict_files(self, model: LoadedModel, files: Iterable[bytes], *,
                      refused: Callable[[int, imaging.ImageError], None] | None = None,
                      explain: bool = False) -> list[Prediction | imaging.ImageError]:
        """Each file's digit, in order, in one forward pass; a file that cannot be read is
        its ImageError in the list. ``refused(index, error)`` is called first, and may raise
        to stop the request there (V2 answers only the first refused image)."""
        read: list[np.ndarray | imaging.ImageError] = []
        with self.slots:
            with self.metrics.stage("preprocess"):
                for index, data in enumerate(files):
                    try:
                        read.append(self._read(data))
                    except imaging.ImageError as exc:
                        if refused is not None:
                            refused(index, exc)
                        read.append(exc)
            images = [item for item in read if isinstance(item, np.ndarray)]
            predictions = iter(self._predict(model, np.stack(images), explain) if images else ())
        return [item if isinstance(item, imaging.ImageError) else next(predictions)
                for item in read]

    def predict_number(self, model: LoadedModel, data: bytes) -> list[tuple[Prediction, Box]]:
        """A written number's digits, left to right, each with its (x, y, w, h) box in the
        upload, in one forward pass (/predict/number)."""
        with self.slots:
            with self.metrics.stage("preprocess"):
                digits = self.transform_number(self._checked(data), max_pixels=self.max_pixels,
                                               max_digits=MAX_NUMBER_DIGITS)
            predictions = self._predict(model, np.stack([image for image, _box in digits]))
        return [(prediction, box) for prediction, (_image, box) in zip(predictions, digits)]

    def predict_pixels(self, model: LoadedModel, images: np.ndarray, *,
                       explain: bool = False) -> list[Prediction]:
        """The digits of images already 28x28 in [0, 1], ink bright on black (V2's pixels),
        PREDICT_CHUNK at a time, each chunk in its own turn of the compute slot."""
        predictions = []
        for start in range(0, len(images), PREDICT_CHUNK):
            with self.slots:
                predictions += self._predict(model, images[start:start + PREDICT_CHUNK],
                                             explain)
        return predictions

    def _checked(self, data: bytes) -> bytes:
        """``data``, refused if empty or larger than one upload may be (a batch's files)."""
        if not data:
            raise EmptyImage()
        if len(data) > self.max_upload_bytes:
            raise imaging.ImageTooLarge(message=f"The file is larger than the limit of "
                                                f"{self.max_upload_bytes} bytes.")
        return data

    def _read(self, data: bytes) -> np.ndarray:
        """One image file -> the 28x28 model input."""
        return self.transform(self._checked(data), max_pixels=self.max_pixels)

    def _predict(self, model: LoadedModel, images: np.ndarray,
                 explain: bool = False) -> list[Prediction]:
        """The model on images (N, 28, 28): one Prediction each, its digit counted, and with
        ``explain`` its attributions (one image at a time: memory of one explanation's batch)."""
        with self.metrics.stage("inference"):
            answers = self.forward(model, images)
        model_id, predictions = model.model_id, []
        for image, p, digit, is_digit, sure in zip(
                images, answers.probabilities, answers.probabilities.argmax(axis=1).tolist(),
                answers.is_digit.tolist(), answers.digit_probability.tolist()):
            self.metrics.observe_prediction(digit)
            predictions.append(Prediction(image, p, digit, model.label(digit), model_id,
                                          is_digit, sure))
        if explain:
            with self.metrics.stage("explain"):
                for prediction in predictions:
                    prediction.attributions = model.explain(prediction.image, prediction.digit)
        return predictions
