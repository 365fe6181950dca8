"""Typed letters and symbols among the not-digits (trainer.typefaces): set in real fonts,
framed as the server frames an upload, never a digit or a lookalike, and GNU FreeFont (the
benchmark's held-out face) never among them."""

from __future__ import annotations

import io

import numpy as np
import pytest

from trainer import typefaces
from trainer.strokes import BOX

FONTS = typefaces.font_files()
needs_fonts = pytest.mark.skipif(not FONTS, reason="no DejaVu or Liberation fonts here "
                                                   "(apt-get install fonts-dejavu-core)")


def test_no_digit_or_lookalike_is_typed_as_not_a_digit():
    chars = typefaces.LETTERS + typefaces.SYMBOLS
    assert not set(chars) & set("0123456789OolISZBgqbszij!/|()[]{}°¡")
    assert len(set(chars)) == len(chars)


def test_the_benchmarks_held_out_face_is_not_a_training_font():
    from bench.corpora import HELD_OUT_STYLES

    assert not [f for f in FONTS if f.name.startswith(HELD_OUT_STYLES["font"])]
    assert typefaces.font_files([]) == []
    assert typefaces.font_files(["/nowhere"]) == []


@needs_fonts
def test_typed_letters_are_framed_like_uploads_and_reproducible():
    images = typefaces.typed(60, np.random.default_rng(3), FONTS)
    again = typefaces.typed(60, np.random.default_rng(3), FONTS)
    np.testing.assert_array_equal(images, again)
    assert images.shape == (60, 28, 28) and images.dtype == np.float32
    assert images.min() >= 0 and images.max() <= 1
    r = np.arange(28)
    for image in images:
        ys, xs = np.nonzero(image > 0.05)
        assert BOX - 3 <= max(np.ptp(ys), np.ptp(xs)) + 1 <= BOX + 1
        total = image.sum()
        assert abs(image.sum(axis=1) @ r / total - 14) <= 1.5
        assert abs(image.sum(axis=0) @ r / total - 14) <= 1.5
    assert typefaces.typed(5, np.random.default_rng(3), []).shape == (0, 28, 28)


@needs_fonts
def test_a_typed_letter_is_what_the_server_makes_of_it_uploaded():
    """A K set in a font and uploaded as dark type on white paper reaches the model as the
    trainer frames it (the server's own framing stage, after the same rendering)."""
    from PIL import Image, ImageFont

    from server.imaging import to_mnist

    class Steady:  # no thickening and no turn: the glyph as the font draws it
        def __init__(self):
            self.rng = np.random.default_rng(0)

        def random(self):
            return 0.99

        def uniform(self, low, high):
            return 0.0

    font = ImageFont.truetype(str(FONTS[0]), typefaces.EM)
    ink = typefaces._glyph("K", font, Steady())
    out = io.BytesIO()
    Image.fromarray(np.rint(255 * (1 - ink)).astype(np.uint8), "L").save(out, "PNG")
    from models import framing

    assert np.abs(framing.frame(ink) - to_mnist(out.getvalue())).mean() < 0.03


@needs_fonts
def test_a_glyph_a_font_lacks_is_skipped_not_drawn_as_its_missing_box():
    from PIL import ImageFont

    font = ImageFont.truetype(str(FONTS[0]), typefaces.EM)
    assert typefaces.has_glyph(font, "K") and not typefaces.has_glyph(font, "\u4e00")
    every = [ImageFont.truetype(str(f), typefaces.EM) for f in FONTS]
    # every character is some font's own: none is only ever a missing box
    for char in typefaces.LETTERS + typefaces.SYMBOLS:
        assert any(typefaces.has_glyph(face, char) for face in every), char


@needs_fonts
def test_characters_no_font_has_are_left_out_not_waited_for(monkeypatch):
    """A machine's fonts may lack some of the characters: those are never drawn (and the run
    never waits on them); the images are still as many as asked."""
    monkeypatch.setattr(typefaces, "LETTERS", "\u4e00")
    monkeypatch.setattr(typefaces, "SYMBOLS", "\u4e01")
    assert typefaces.typed(10, np.random.default_rng(0), FONTS).shape == (0, 28, 28)
    monkeypatch.setattr(typefaces, "LETTERS", "\u4e00K")  # only letters: all of them K
    one = typefaces.typed(10, np.random.default_rng(0), FONTS)
    assert one.shape == (10, 28, 28)
    monkeypatch.setattr(typefaces, "SYMBOLS", "\u4e01+")
    images = typefaces.typed(10, np.random.default_rng(0), FONTS)
    assert images.shape == (10, 28, 28) and all(image.any() for image in images)
    digits, labels = typefaces.typed_digits(12, np.random.default_rng(0), FONTS)
    assert digits.shape == (12, 28, 28) and labels.tolist() == [i % 10 for i in range(12)]
    assert typefaces.typed_digits(12, np.random.default_rng(0), [])[0].shape == (0, 28, 28)
