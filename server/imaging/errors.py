"""The errors of the upload pipeline: each carries a stable ``code``; no HTTP status here
(``server.errors`` maps codes to statuses). Messages are user-facing and never echo input."""

from __future__ import annotations

FORMAT_NAMES = "a PNG, JPEG, GIF, BMP, WebP or TIFF"


class ImageError(ValueError):
    """An upload that cannot become 28x28 digits; the message says what to send instead."""

    code = "invalid_image"


class InvalidImage(ImageError):  # noqa: N818 - the API's names for the answers
    """Empty, undecodable, truncated, or not an image at all."""

    code = "invalid_image"

    def __init__(self, message: str | None = None):
        super().__init__(message or (
            "The upload could not be decoded as an image (corrupt, truncated or not an "
            f"image): send {FORMAT_NAMES} file."))


class UnsupportedFormat(ImageError):  # noqa: N818 - the API's names for the answers
    """An image in a format outside PNG, JPEG, GIF, BMP, WebP and TIFF."""

    code = "unsupported_format"

    def __init__(self):
        super().__init__(f"This image format is not supported: send {FORMAT_NAMES} file.")


class ImageTooLarge(ImageError):  # noqa: N818 - the API's names for the answers
    """More pixels (or more decoding work) than allowed, refused before decoding."""

    code = "image_too_large"

    def __init__(self, max_pixels: int | None = None, message: str | None = None):
        super().__init__(message or (
            f"The image has too many pixels (the limit is {max_pixels:,}): "
            "scale it down and send it again."))


class NoDigitFound(ImageError):  # noqa: N818 - the API's names for the answers
    """Nothing that looks like a digit on paper: a blank or uniformly inked image, or too
    little ink to be a digit (a speck, a thin rule, a picture under 4 pixels tall or 2 wide)."""

    code = "no_digit_found"

    def __init__(self):
        super().__init__(
            "No digit found: the image looks blank or uniformly inked, or holds too little ink "
            "to be a digit (a speck, a thin line). Send a dark digit on light paper, or a "
            "light digit on a dark background.")


class TooManyDigits(ImageError):  # noqa: N818 - the API's names for the answers
    """A written number with more separate digits than allowed."""

    code = "too_many_digits"

    def __init__(self, found: int, max_digits: int):
        super().__init__(
            f"The image holds {found} separate marks, more than the {max_digits} digits "
            "allowed: crop it to the number, or send the digits in several images.")
