"""Knowing what is not a digit: the generated training images, and a small model trained for
real that refuses letters it never saw (drawn by PIL from the fonts) and keeps digits."""

from __future__ import annotations

import numpy as np
import pytest

from models import load
from models.decision import Decision
from trainer.strokes import BOX, arc, fit_box, render
from trainer.synthetic import (
    KINDS,
    add_synthetic,
    broad_nib,
    clothes,
    not_digits,
    pen_digits,
    typeset_digits,
)


def _ink_box(image: np.ndarray) -> tuple[int, int]:
    ys, xs = np.nonzero(image > 0.05)
    return ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


@pytest.mark.parametrize("draw", [pen_digits, typeset_digits])
def test_generated_images_are_framed_like_uploads_and_reproducible(draw):
    images, labels = draw(40, np.random.default_rng(5))
    again, _ = draw(40, np.random.default_rng(5))
    np.testing.assert_array_equal(images, again)
    assert images.dtype == np.float32 and images.min() >= 0 and images.max() <= 1
    assert labels.tolist() == [i % 10 for i in range(40)]
    negatives, kinds = not_digits(60, np.random.default_rng(6))
    assert set(kinds.tolist()) == set(range(len(KINDS)))
    drawn = np.isin(kinds, [list(KINDS).index("symbols"), list(KINDS).index("doodles")])
    r = np.arange(28)
    for image in np.concatenate([images, negatives[drawn]]):
        # the long side of the ink fits MNIST's 20-pixel box, the mass sits at (14, 14)
        assert BOX - 3 <= max(_ink_box(image)) <= BOX + 2
        total = image.sum()
        assert abs(image.sum(axis=1) @ r / total - 14) <= 1.0
        assert abs(image.sum(axis=0) @ r / total - 14) <= 1.0
    for image in negatives[~drawn]:
        # pictures are framed by the server's own stage (models.framing): the long side of
        # their ink in the box, the mass as near (14, 14) as the box allows
        assert max(_ink_box(image)) <= BOX + 1 and image.any()


def test_a_stroke_is_drawn_with_the_pen_width_asked():
    """A long vertical stroke of width w covers about w pixels per row."""
    for width in (1.5, 2.5, 3.2):
        image = render([[np.array([[0.0, 0.0], [0.0, 1.0]])]], np.array([width]))[0]
        rows = image[8:20].sum(axis=1)
        np.testing.assert_allclose(rows, width, atol=0.15)


def test_a_broad_nib_draws_an_o_thick_at_the_sides_and_thin_at_the_top():
    """As a serif face's O: a pen held flat swells on the upright parts of a round stroke."""
    ring = arc(0.5, 0.5, 0.4, 0.5, 0, 360)
    pieces, widths = broad_nib([ring], 3.0, 0.6, angle=0.0)
    image = render([pieces], [widths])[0]
    side = image[14, :14].sum()  # the left side, crossed by the middle row
    top = image[:14, 14].sum()  # the top, crossed by the middle column
    assert side > 2.5 and top < 1.2, (side, top)


def test_fit_box_frames_any_ink_map():
    ink = np.zeros((90, 40), dtype=np.float32)
    ink[10:80, 5:30] = 1.0
    framed = fit_box(ink)
    assert _ink_box(framed)[0] == BOX


def test_synthetic_images_are_appended_with_their_labels():
    from trainer.data import Split

    split = Split(np.zeros((5, 28, 28), np.float32), np.arange(5))
    pictures = np.zeros((30, 28, 28), np.uint8)
    pictures[:, 4:24, 8:20] = 200
    out = add_synthetic(split, 10, 7, seed=0, pictures=pictures, n_clothes=4, typeset=20)
    assert len(out) == 46 and out.labels[5:15].tolist() == list(range(10))
    assert (out.labels[15:26] == 10).all()
    assert out.labels[26:].tolist() == [i % 10 for i in range(20)]
    again = add_synthetic(split, 10, 7, seed=0, pictures=pictures, n_clothes=4, typeset=20)
    np.testing.assert_array_equal(out.images, again.images)
    # the typeset digits draw from their own stream: the rest are those of a run without them
    without = add_synthetic(split, 10, 7, seed=0, pictures=pictures, n_clothes=4)
    np.testing.assert_array_equal(out.images[:26], without.images)


def test_a_blank_picture_stays_blank():
    """A picture with no ink the server would see (a texture drawn too faint) is framed as a
    blank image, not an error that stops the run."""
    pictures = np.zeros((3, 28, 28), np.uint8)
    pictures[1, 5, 5] = 2  # below the ink threshold
    framed = clothes(pictures, 3, np.random.default_rng(0))
    assert framed.shape == (3, 28, 28) and not framed.any()


def _png(ink: np.ndarray) -> bytes:
    """An ink map (1: ink) as dark ink on white paper, a PNG."""
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.rint(255 * (1 - ink)).astype(np.uint8), "L").save(out, "PNG")
    return out.getvalue()


def test_the_trainer_frames_clothes_as_the_server_frames_an_upload():
    """A filled shirt drawn at 28x28 reaches the model thinned by the server's normalisation
    (models.framing): the trainer frames its pictures of clothes the same way, not as drawn."""
    from server.imaging import to_mnist

    yy, xx = np.mgrid[0:28, 0:28]
    shirt = ((np.abs(xx - 14) < 6) & (yy > 3) & (yy < 25)) | (
        (np.abs(xx - 14) < 11) & (yy > 3) & (yy < 12))
    picture = (shirt * 220).astype(np.uint8)
    framed = clothes(picture[None], 1, np.random.default_rng(0))[0]
    uploaded = to_mnist(_png(shirt.astype(np.float32)))
    assert np.abs(framed - uploaded).mean() < 0.02
    drawn = picture / 255
    assert np.abs(drawn - uploaded).mean() > 0.1  # what it would have trained on before


@pytest.fixture(scope="session")
def not_a_digit_model_path(mnist_dir, tmp_path_factory):
    """A small model trained for real with generated not-digits and, where the fonts are,
    typed letters and digits (about 40 s of CPU)."""
    from trainer.__main__ import main

    out = tmp_path_factory.mktemp("not-a-digit")
    path = out / "model.npz"
    # pictures of clothes from Debian's dataset-fashion-mnist (.ci/run installs it); without
    # it the trainer warns and trains without them: nothing is downloaded in tests
    argv = ["--data-dir", str(mnist_dir), "--train-size", "6000", "--epochs", "4",
            "--not-digits", "4000", "--pen-digits", "600", "--clothes", "600", "--no-download",
            "--out", str(path), "--checkpoint-dir", str(out / "checkpoints"), "--quiet"]
    assert main(argv) == 0
    return path


def test_a_trained_model_refuses_font_letters_and_keeps_mnist_digits(not_a_digit_model_path,
                                                                     mnist_dir):
    """Letters and doodles drawn by PIL (not by the trainer's generator) are refused; MNIST
    test digits uploaded as PNGs are kept; both through the server's imaging pipeline."""
    bench = pytest.importorskip("bench.uploads")
    from bench import corpora

    if not corpora.fonts():
        pytest.skip("no fonts: apt install fonts-dejavu-core fonts-liberation")
    module, metadata = load(not_a_digit_model_path)
    decision = Decision.from_metadata(metadata, module.dim_output)
    metrics = metadata["metrics"]
    assert decision is not None and metrics["test_refused"] < 0.02
    # held-out generated letters, doodles, textures (the calibration's own stream); its
    # threshold lets 99.9% of degraded digits through, so a small model refuses less than the
    # default (docs/benchmarks.md)
    held_out = metrics["calibration_refused"]
    kinds = [v for k, v in held_out.items() if k.startswith("not:")]
    assert min(kinds) >= 0.4 and np.mean(kinds) >= 0.6, held_out
    assert max(v for k, v in held_out.items() if not k.startswith("not:")) <= 0.02, held_out
    # PIL's fonts (the trainer's typed letters are DejaVu and Liberation; FreeFont it never
    # saw) and smooth pen doodles, a style it never saw: a model without the decision refuses
    # none, the default most (docs/benchmarks.md)
    preprocessing = metadata["preprocessing"]
    letters = corpora.not_digit_set(120, seed=3, kinds=("font-letters", "doodles"))
    predicted, _, answer = bench.evaluate_uploads(module, preprocessing, letters, decision)
    refused = ~answer.is_digit | (predicted < 0)  # not a digit, or no digit found at all
    assert np.mean(refused) >= 0.25, "refused too few letters and doodles"

    from trainer.data import load_idx_dir

    test = load_idx_dir(mnist_dir).test
    digits = bench._as_uploads(test.images[:300], test.labels[:300])
    predicted, _, answer = bench.evaluate_uploads(module, preprocessing, digits, decision)
    assert np.mean(~answer.is_digit) <= 0.03, "refused too many MNIST digits"
    assert np.mean(predicted == test.labels[:300]) >= 0.9


def test_a_larger_refuse_digits_share_is_a_stricter_decision(not_a_digit_model_path, mnist_dir):
    """--refuse-digits: the threshold refuses that share of the degraded and pen-drawn
    digits, and a larger share refuses more of every kind of not-digit with them."""
    from models.decision import scores
    from trainer.calibrate import HARD_GROUPS, calibrate, calibration_set, logits_of
    from trainer.data import load_idx_dir

    module, metadata = load(not_a_digit_model_path)
    val = load_idx_dir(mnist_dir).val
    data = calibration_set(val.images, val.labels, seed=5, count=1000)
    decided = {share: calibrate(module, data, metadata["preprocessing"], share)
               for share in (0.001, 0.05)}
    (loose, loose_report), (strict, strict_report) = decided[0.001], decided[0.05]
    assert strict.threshold > loose.threshold
    logits = logits_of(module, data.images, metadata["preprocessing"])
    digits = np.isin(data.groups, HARD_GROUPS)
    assert np.mean(~scores(logits, strict).is_digit[digits]) == pytest.approx(0.05, abs=0.002)
    assert np.mean(~scores(logits, loose).is_digit[digits]) <= 0.002
    kinds = [k for k in strict_report["refused"] if k.startswith("not:")]
    assert all(strict_report["refused"][k] >= loose_report["refused"][k] for k in kinds)
    assert sum(strict_report["refused"][k] for k in kinds) > sum(
        loose_report["refused"][k] for k in kinds)


def test_the_benchmark_keeps_styles_out_of_tuning():
    """Every not-digit of the benchmark's corpus says whether its style (font family, letter,
    doodle, photo scene, clothing class, noise) is one tuning may look at or a held-out one."""
    from bench import corpora

    if not corpora.fonts():
        pytest.skip("no fonts: apt install fonts-dejavu-core fonts-liberation")
    uploads = corpora.not_digit_set(96, seed=5)
    assert {u.tags["styles"] for u in uploads} == {"dev", "held-out"}
    for upload in uploads:
        tags = upload.tags
        if tags["kind"] == "doodles":
            held_out = tags["doodle"] in corpora.HELD_OUT_STYLES["doodles"]
            assert (tags["styles"] == "held-out") == held_out
        if tags["kind"] == "photos":
            assert tags["scene"] in (*corpora.PHOTO_SCENES, "texture", "noise-scene")
