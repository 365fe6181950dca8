"""The one inference service under both protocols: image files or pixels -> Predictions.

The PyTorch Flask tutorial's ``transform_image`` -> ``get_prediction``, shared: /predict,
/predict/batch and /predict/number (``server.api``) and /v2 (``server.v2``) read their requests,
call one method here per request, and shape the Predictions into their own JSON. No Flask and
no HTTP statuses here; errors are ``imaging.ImageError``s, whose codes ``server.errors`` maps.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from server import imaging
from server.imaging.segment import Box
from server.metrics import Metrics
from server.model import LoadedModel

#: Digits one written number may hold (more is answered 422 too_many_digits).
MAX_NUMBER_DIGITS = 12


class EmptyImage(imaging.ImageError):  # noqa: N818 - the API's names for the answers
    """An upload of no bytes at all: told apart from an undecodable one."""

    code = "empty_image"

    def __init__(self):
        super().__init__("The uploaded image is empty.")


def _model_predict(model: LoadedModel, images: np.ndarray) -> np.ndarray:
    """The default ``forward``: the loaded model's own ``predict``."""
    return model.predict(images)


@dataclass(slots=True)  # not frozen: a frozen __init__ costs 7x, per image of a batch
class Prediction:
    """One image's answer, which each protocol shapes into its JSON.

    A new per-image answer (whether the image is a digit at all, attributions over ``image``)
    is a new field here, filled in by ``Inference._predict``.
    """

    image: np.ndarray  #: float32 (28, 28), the image the model saw
    probabilities: np.ndarray  #: float64 (10,), summing to 1
    digit: int
    label: str | None  #: the class name, when the model file names its classes
    model_id: str
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
    ``imaging.to_mnist_digits``) and ``forward`` ((model, images) -> probabilities (N, 10),
    ``model.predict``). That is the service's seam: bench/floor_gunicorn.conf.py replaces
    them with constants to measure the service without its work. Nothing else should.
    """

    def __init__(self, metrics: Metrics, *, compute_slots: int, max_upload_bytes: int,
                 max_pixels: int,
                 transform: Callable[..., np.ndarray] = imaging.to_mnist,
                 transform_number: Callable[..., list[tuple[np.ndarray, Box]]]
                 = imaging.to_mnist_digits,
                 forward: Callable[[LoadedModel, np.ndarray], np.ndarray] = _model_predict):
        self.metrics = metrics
        self.max_upload_bytes = max_upload_bytes
        self.max_pixels = max_pixels
        self.transform = transform
        self.transform_number = transform_number
        self.forward = forward
        self._slots = threading.BoundedSemaphore(compute_slots)

    def predict_file(self, model: LoadedModel, data: bytes, *,
                     explain: bool = False) -> Prediction:
        """One image file's digit (/predict)."""
        with self._slots:
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
        with self._slots:
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
        with self._slots:
            with self.metrics.stage("preprocess"):
                digits = self.transform_number(self._checked(data), max_pixels=self.max_pixels,
                                               max_digits=MAX_NUMBER_DIGITS)
            predictions = self._predict(model, np.stack([image for image, _box in digits]))
        return [(prediction, box) for prediction, (_image, box) in zip(predictions, digits)]

    def predict_pixels(self, model: LoadedModel, images: np.ndarray, *,
                       explain: bool = False) -> list[Prediction]:
        """The digits of images already 28x28 in [0, 1], ink bright on black (V2's pixels)."""
        with self._slots:
            return self._predict(model, images, explain)

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
            probabilities = self.forward(model, images)
        model_id, predictions = model.model_id, []
        for image, p, digit in zip(images, probabilities, probabilities.argmax(axis=1).tolist()):
            self.metrics.observe_prediction(digit)
            predictions.append(Prediction(image, p, digit, model.label(digit), model_id))
        if explain:
            with self.metrics.stage("explain"):
                for prediction in predictions:
                    prediction.attributions = model.explain(prediction.image, prediction.digit)
        return predictions
