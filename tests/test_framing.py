"""models.framing: the server's stages 5-6 and the trainer's framing of its generated and
borrowed not-digits are one piece of code; models/ depends on neither of its users."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from models import framing
from server.imaging import NoDigitFound
from server.imaging import normalise as server_stage
from trainer.synthetic import _as_seen

MODELS = Path(__file__).resolve().parent.parent / "models"


def test_models_import_neither_the_server_nor_the_trainer():
    """Imports flow autodiff <- models <- trainer, server: moving the framing into models/
    must not make models/ reach back into either of them."""
    for source in sorted(MODELS.glob("*.py")):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in {"server", "trainer", "bench"}, (
                    f"{source.name} imports {name}")


def _inks() -> list[np.ndarray]:
    """Ink maps that take each path of the framing (strokes left alone, a hairline thickened,
    a filled shape thinned) with a tenth of their ink at full strength, so that the trainer's
    scaling of the ink (its 90th percentile to 1, as the server's ink stage) changes nothing."""
    yy, xx = np.mgrid[0:60, 0:90]
    rng = np.random.default_rng(3)
    ring = (np.abs(np.hypot(yy - 30, xx - 40) - 20) < 2.5) * 1.0  # a pen-width 0
    hairline = ((np.abs(yy - xx * 0.5 - 5) < 0.6) & (xx > 10) & (xx < 85)) * 1.0
    shirt = (((np.abs(xx - 45) < 18) & (yy > 5) & (yy < 55))
             | ((np.abs(xx - 45) < 35) & (yy > 5) & (yy < 22))) * 1.0
    shirt[shirt > 0] *= np.where(rng.random(int(shirt.sum())) < 0.5, 1.0, 0.6)  # a print
    return [ring.astype(np.float32), hairline.astype(np.float32), shirt.astype(np.float32)]


@pytest.mark.parametrize("index", range(3), ids=["ring", "hairline", "filled"])
def test_the_trainer_frames_an_ink_map_exactly_as_the_server_does(index):
    ink = _inks()[index]
    served = server_stage.normalise(server_stage.crop_to_ink(ink))
    trained = _as_seen(ink)
    np.testing.assert_array_equal(trained, served)
    assert trained.dtype == np.float32 and trained.shape == (28, 28) and trained.any()
    if index:  # the hairline is thickened, the filled shape thinned: not a plain resize
        plain = np.zeros_like(trained)
        fitted = framing.fit(framing.crop_to_ink(ink), framing.BOX)
        plain[:fitted.shape[0], :fitted.shape[1]] = fitted
        assert trained.sum() != pytest.approx(plain.sum(), rel=0.05)


def test_no_ink_is_an_error_for_the_server_and_a_blank_image_for_the_trainer():
    blank = np.zeros((30, 40), np.float32)
    with pytest.raises(framing.NoInkError):
        framing.frame(blank)
    with pytest.raises(NoDigitFound):
        server_stage.crop_to_ink(blank)
    assert not _as_seen(blank).any()


@pytest.mark.parametrize("width", [2, 4, 9])
def test_a_straight_stroke_that_fills_its_crop_is_measured_by_its_own_width(width):
    """The crop is cut to the ink, so a straight 1 touches all four sides of it: its border is
    the crop's frame. Measured without that frame, a 4-pixel bar read as tens of pixels wide
    and was eroded into a stub, which looked like the trousers among the not-digits."""
    bar = np.ones((60, width), np.float32)
    expected = 2 * bar.size / (2 * 60 + 2 * width) * framing.BOX / 60
    assert framing.stroke_change(bar) in (None, pytest.approx(expected))
    seen = framing.normalise(bar) > 0.5
    assert seen.any(axis=1).sum() == framing.BOX  # the 20-pixel box's full height, not a stub
    assert seen.sum(axis=1).max() <= 4  # and a stroke of MNIST's width
