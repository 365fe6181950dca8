"""Flagged 1s (trainer.flags): the images, their determinism, and the --flag-ones switch."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from test_trainer import arrays_of, assert_same_arrays, run, write_synthetic_mnist

import trainer.run
from models import load, read_checkpoint
from models.archive import META_KEY
from trainer.checkpoints import load_checkpoint
from trainer.cli import build_parser, parse
from trainer.config import CHECKPOINT_NAME, TrainConfig, UsageError
from trainer.flags import INK, add_flag, flag_ones, slant, stroke_width


def upright_ones(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 28, 28) float32: plain vertical strokes, 2-3 px wide, soft-edged, of varied height."""
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for image in images:
        top, bottom = rng.integers(3, 7), rng.integers(21, 25)
        left, width = rng.integers(11, 15), rng.integers(2, 4)
        image[top:bottom, left:left + width] = rng.uniform(0.85, 1.0)
        image[top:bottom, left - 1] = image[top:bottom, left + width] = 0.4  # anti-aliased edge
    return images


def slanted_ones(n: int) -> np.ndarray:
    """(n, 28, 28): strokes leaning 0.5 columns per row, too slanted to be flagged."""
    images = np.zeros((n, 28, 28), dtype=np.float32)
    for row in range(4, 24):
        col = int(round(14 + 0.5 * (row - 14)))
        images[:, row, col:col + 2] = 1.0
    return images


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """test_trainer's synthetic digits (its 1s are upright enough to get flags)."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"), seed=0)


@pytest.fixture
def ones():
    rng = np.random.default_rng(0)
    images = np.concatenate([upright_ones(40, rng), slanted_ones(10),
                             upright_ones(30, rng)])  # the 30: other digits, upright too
    labels = np.array([1] * 50 + [7] * 30)
    return images, labels


def test_slant_and_stroke_width():
    assert abs(slant(upright_ones(1, np.random.default_rng(0)))[0]) < 0.05
    assert slant(slanted_ones(1))[0] == pytest.approx(-0.5, abs=0.05)  # top to the left
    bar = np.zeros((28, 28), dtype=bool)
    bar[4:24, 12:15] = True
    assert stroke_width(bar) == pytest.approx(2 * 60 / 46)  # 3 wide: 2 * area / perimeter


def test_half_the_upright_ones_get_a_flag_left_of_and_below_the_stem_top(ones):
    images, labels = ones
    indices, flagged = flag_ones(images, labels, seed=0)
    assert flagged.dtype == np.float32 and flagged.shape == (20, 28, 28)  # half of 40 upright
    assert indices.tolist() == sorted(set(indices.tolist())) and (indices < 40).all()
    assert flagged.min() >= 0 and flagged.max() <= 1
    for f, source in zip(flagged, images[indices]):
        added = f - source
        ys, xs = np.nonzero(source > INK)
        top, left = ys.min(), xs[ys == ys.min()].min()
        centre = int(np.ceil(xs[ys == top].mean()))
        ink = added.sum()
        # the flag: drawn in the digit's ink, 18-35% of its height at 25-55 degrees, as wide
        # as its stroke: a few pixels' worth, never a second digit
        assert 0.1 * source.sum() < ink < 0.6 * source.sum(), ink
        rows, cols = np.nonzero(added > 0.05)
        # from the top of the stem (the flat start's corner pokes up to half a stroke above it)
        assert rows.min() >= top - 2 and cols.max() <= left + 2
        weight = added[rows, cols]
        assert np.average(rows, weights=weight) > top + 1  # going down ...
        assert np.average(cols, weights=weight) < left  # ... and to the left
        assert added[top - 2:, :centre].sum() > 0.9 * ink
        assert (f >= source).all() and f.max() <= source.max() + 1e-6  # in the digit's ink


def test_same_seed_same_images_other_seed_other_images(ones):
    images, labels = ones
    (ia, a), (ib, b) = flag_ones(images, labels, seed=3), flag_ones(images, labels, seed=3)
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, flag_ones(images, labels, seed=4)[1])
    state = np.random.get_state()[1].copy()
    flag_ones(images, labels, seed=3)
    np.testing.assert_array_equal(np.random.get_state()[1], state)  # no global RNG


def test_no_ones_no_images():
    images = upright_ones(5, np.random.default_rng(0))
    for x, y in ((images, np.full(5, 7)), (images[:0], np.zeros(0, int))):
        indices, flagged = flag_ones(x, y, seed=0)
        assert indices.shape == (0,) and flagged.shape == (0, 28, 28)


def test_the_numpy_flag_carries_the_ink_of_a_4x_pil_drawing():
    """The design this replaces drew the flag with PIL (a line and a round end on a 4x canvas,
    reduced 4x); the trainer draws it in numpy (it never imports PIL). Same ink within 3%."""
    pil_image = pytest.importorskip("PIL.Image")
    pil_draw = pytest.importorskip("PIL.ImageDraw")
    rng = np.random.default_rng(1)
    images = upright_ones(200, rng)
    ours = theirs = 0.0
    for image in images:
        length, angle, factor = rng.uniform(0.18, 0.35), rng.uniform(25, 55), rng.uniform(0.8, 1.1)
        ours += (add_flag(image, length, angle, factor) - image).sum()
        ink = image > INK
        ys, xs = np.nonzero(ink)
        x0, y0 = xs[ys <= ys.min() + 1].mean() * 4 + 2, (ys.min() + 0.5) * 4
        a, flag_length = np.deg2rad(angle), length * (ys.max() - ys.min() + 1) * 4
        x1, y1 = x0 - flag_length * np.cos(a), y0 + flag_length * np.sin(a)
        w = round(max(1.2, stroke_width(ink)) * 4 * factor)
        canvas = pil_image.new("L", (112, 112), 0)
        draw = pil_draw.Draw(canvas)
        draw.line([(x0, y0), (x1, y1)], fill=255, width=w)
        draw.ellipse([x1 - w / 2, y1 - w / 2, x1 + w / 2, y1 + w / 2], fill=255)
        flag = np.asarray(canvas.reduce(4), dtype=np.float32) / 255
        theirs += (np.maximum(image, flag * np.percentile(image[ink], 90)) - image).sum()
    assert ours == pytest.approx(theirs, rel=0.03)


def test_the_trainer_does_not_import_pil():
    code = "import sys, trainer.run, trainer.flags; print('PIL' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# -- the switch --------------------------------------------------------------------------------
def test_on_for_digits_off_for_clothes_and_refused_there():
    assert TrainConfig().flag_ones is True
    assert TrainConfig(dataset="fashion-mnist").flag_ones is False
    assert parse([]).config.flag_ones is True
    assert parse(["--no-flag-ones"]).config.flag_ones is False
    assert parse(["--dataset", "fashion-mnist"]).config.flag_ones is False
    with pytest.raises(UsageError, match="--flag-ones"):
        parse(["--dataset", "fashion-mnist", "--flag-ones"])
    assert "--flag-ones, --no-flag-ones" in build_parser().format_help()
    config = TrainConfig(flag_ones=False)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_a_run_records_the_switch_and_how_many_ones_it_flagged(tmp_path, synth):
    def trained(*flags: str) -> tuple:
        assert run(tmp_path, synth, "--epochs", "1", "--quiet", *flags) == 0
        training = load(tmp_path / "model.npz")[1]["training"]
        return training["flag_ones"], training["flagged_ones"], training["train_images"]

    on = trained()
    assert on[0] is True and on[1] > 0 and on[2] == 400  # the synthetic 1s are upright
    assert trained("--no-flag-ones") == (False, 0, 400)
    assert trained("--dataset", "fashion-mnist") == (False, 0, 400)


def test_the_flags_change_nothing_but_the_flagged_images(tmp_path, synth,
                                                       monkeypatch):
    """With no 1s to flag, --flag-ones trains exactly as --no-flag-ones: its randomness is its
    own, and the normalisation comes from the images as they are."""
    common = ("--epochs", "2", "--augment", "--seed", "5", "--quiet")
    assert run(tmp_path, synth, *common, "--no-flag-ones", out="off.npz", ckpt="ck_off") == 0
    monkeypatch.setattr(trainer.run, "flag_ones",
                        lambda images, labels, seed: (np.zeros(0, int), images[:0]))
    assert run(tmp_path, synth, *common, out="empty.npz", ckpt="ck_empty") == 0
    assert_same_arrays(arrays_of(tmp_path / "off.npz"), arrays_of(tmp_path / "empty.npz"))
    assert load(tmp_path / "off.npz")[1]["preprocessing"] == \
        load(tmp_path / "empty.npz")[1]["preprocessing"]


def test_same_seed_and_flags_identical_arrays_and_resume_keeps_the_switch(tmp_path,
                                                                         synth):
    # a step schedule: a cosine one is recomputed when --epochs changes on resume
    common = ("--augment", "--seed", "2", "--schedule", "step", "--lr-step-epochs", "1",
              "--quiet")
    assert run(tmp_path, synth, "--epochs", "2", *common, out="a.npz", ckpt="ck_a") == 0
    assert run(tmp_path, synth, "--epochs", "2", *common, out="b.npz", ckpt="ck_b") == 0
    assert_same_arrays(arrays_of(tmp_path / "a.npz"), arrays_of(tmp_path / "b.npz"))
    assert run(tmp_path, synth, "--epochs", "1", *common, out="c.npz", ckpt="ck_c") == 0
    assert load_checkpoint(tmp_path / "ck_c" / CHECKPOINT_NAME).config.flag_ones is True
    assert run(tmp_path, synth, "--resume", "--augment", "--epochs", "2", "--quiet",
               out="c.npz", ckpt="ck_c") == 0
    assert_same_arrays(arrays_of(tmp_path / "a.npz"), arrays_of(tmp_path / "c.npz"))
    assert run(tmp_path, synth, "--resume", "--augment", "--no-flag-ones", "--epochs", "3",
               out="c.npz", ckpt="ck_c") == 2  # a different switch is a different run


def test_a_checkpoint_from_before_the_switch_resumes_without_flags(tmp_path, synth):
    assert run(tmp_path, synth, "--epochs", "1", "--no-flag-ones", "--quiet") == 0
    path = tmp_path / "ckpt" / CHECKPOINT_NAME
    arrays, meta = read_checkpoint(path)
    del meta["config"]["flag_ones"]
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta))})
    assert load_checkpoint(path).config.flag_ones is False
    assert run(tmp_path, synth, "--resume", "--epochs", "2", "--quiet") == 0
    training = load(tmp_path / "model.npz")[1]["training"]
    assert (training["flag_ones"], training["flagged_ones"]) == (False, 0)
