"""Uploaded image bytes to MNIST-like 28x28 arrays; pure (numpy + Pillow), no Flask, no HTTP.

One module per stage, told in full in docs/serving.md. Errors carry a ``code``;
``server.errors`` maps codes to HTTP statuses.
"""

from server.imaging.arrays import label, stroke_width
from server.imaging.encode import to_png
from server.imaging.errors import (
    ImageError,
    ImageTooLarge,
    InvalidImage,
    NoDigitFound,
    TooManyDigits,
    UnsupportedFormat,
)
from server.imaging.pipeline import to_mnist
from server.imaging.segment import to_mnist_digits

__all__ = [
    "ImageError",
    "ImageTooLarge",
    "InvalidImage",
    "NoDigitFound",
    "TooManyDigits",
    "UnsupportedFormat",
    "label",
    "stroke_width",
    "to_mnist",
    "to_mnist_digits",
    "to_png",
]
