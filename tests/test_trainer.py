"""The trainer: CLI, training loop, checkpoints and resume, divergence, outputs.

Most tests train a small MLP (cheapest) or a small CNN on a generated, learnable digit-like
data set (always available, a second or two each); one trains the default CNN on the first
10,000 real MNIST images, one a small CNN on Fashion-MNIST.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import trainer.__main__ as cli
import trainer.run
from autodiff import ComputationGraphNode, no_grad
from models import load, read_checkpoint, to_model_input
from models.archive import META_KEY
from models.decision import Decision, scores
from trainer.augment import (
    CLOTHES,
    AugmentConfig,
    augment_batch,
    elastic_offsets,
    lowres_matrix,
    warp,
)
from trainer.checkpoints import load_checkpoint
from trainer.cli import build_parser
from trainer.config import CHECKPOINT_NAME
from trainer.data import FILES, encode_idx, load_mnist
from trainer.loop import prefetch
from trainer.report import Progress, confusion_matrix, per_class_accuracy
from trainer.schedule import LRSchedule

N_TRAIN = 10_400  # the last 10,000 become the validation set


def synthetic_digits(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Ten fixed random stroke patterns, one per class, with noise: learnable in one epoch."""
    templates = np.random.default_rng(1234).random((10, 28, 28)) < 0.15
    labels = rng.integers(0, 10, n)
    images = templates[labels] * rng.uniform(150, 255, (n, 1, 1)) + rng.uniform(0, 60, (n, 28, 28))
    return np.clip(images, 0, 255).astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """The four IDX files of a small synthetic MNIST."""
    return write_synthetic_mnist(tmp_path_factory.mktemp("synth"), seed=0)


def write_synthetic_mnist(directory: Path, seed: int) -> Path:
    """IDX files of synthetic digits (10,400 training, 500 test images) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    parts = {"train": synthetic_digits(N_TRAIN, rng), "test": synthetic_digits(500, rng)}
    for role, (name, _, _) in FILES.items():
        part, kind = role.split("_")
        array = parts[part][0 if kind == "images" else 1]
        (directory / f"{name}.gz").write_bytes(gzip.compress(encode_idx(array), compresslevel=1))
    return directory


SMALL_MLP = ("--arch", "mlp", "--hidden-dim", "32", "--layers", "1")
SMALL_CNN = ("--channels", "4,8", "--hidden-dims", "32")


def run(tmp_path: Path, data_dir: Path, *flags: str, out: str = "model.npz",
        ckpt: str = "ckpt", arch: tuple[str, ...] = SMALL_MLP) -> int:
    """main() on small defaults (a small MLP unless ``arch`` says otherwise), into tmp_path.

    No augmentation unless ``flags`` ask for it (``--augment``): the synthetic digits are random
    pixel patterns, which warps scramble rather than vary. No generated not-digits or pen
    digits either (the same reason; tests/test_not_a_digit.py trains with them on MNIST).
    """
    argv = ["--data-dir", str(data_dir), "--out", str(tmp_path / out),
            "--checkpoint-dir", str(tmp_path / ckpt), *arch,
            "--train-size", "400", "--batch-size", "32", "--no-augment", "--not-digits", "0",
            "--pen-digits", "0", *flags]
    return cli.main(argv)


def arrays_of(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as archive:
        return {k: archive[k] for k in archive.files if k != "__meta__"}


def assert_same_arrays(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name, strict=True)


# -- schedules ---------------------------------------------------------------------------------
def test_constant_schedule_with_warmup():
    s = LRSchedule("constant", 0.1, total_steps=100, steps_per_epoch=10, warmup_steps=4)
    assert [s(i) for i in range(5)] == pytest.approx([0.025, 0.05, 0.075, 0.1, 0.1])
    assert s(99) == 0.1


def test_step_schedule_decays_every_n_epochs():
    s = LRSchedule("step", 1.0, total_steps=100, steps_per_epoch=10, step_epochs=3, gamma=0.5)
    assert [s(0), s(29), s(30), s(60), s(99)] == pytest.approx([1, 1, 0.5, 0.25, 0.125])


def test_cosine_schedule_runs_from_peak_to_zero():
    s = LRSchedule("cosine", 0.2, total_steps=110, steps_per_epoch=10, warmup_steps=10)
    assert s(10) == pytest.approx(0.2)
    assert s(60) == pytest.approx(0.1)
    assert s(110) == pytest.approx(0.0)
    values = [s(i) for i in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_unknown_schedule():
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        LRSchedule("linear", 0.1, 10, 1)


# -- augmentation ------------------------------------------------------------------------------
def test_augment_keeps_shape_range_and_is_reproducible():
    images = synthetic_digits(16, np.random.default_rng(0))[0] / np.float32(255)
    a = augment_batch(images, np.random.default_rng(5))
    b = augment_batch(images, np.random.default_rng(5))
    assert a.shape == images.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, images)


def test_identity_warp_changes_nothing():
    images = np.random.default_rng(0).random((3, 28, 28), dtype=np.float32)
    cfg = AugmentConfig(max_shift=0, max_rotation=0, scale_range=(1, 1), max_shear=0,
                        thickness_probability=0).without("elastic", "blur", "lowres")
    np.testing.assert_allclose(augment_batch(images, np.random.default_rng(0), cfg), images,
                               atol=1e-6)


def test_shear_slants_a_vertical_stroke():
    image = np.zeros((32, 28, 28), dtype=np.float32)
    image[:, 4:24, 13:15] = 1.0
    cfg = AugmentConfig(max_shift=0, max_rotation=0, scale_range=(1, 1), max_shear=0.3,
                        thickness_probability=0).without("elastic", "blur", "lowres")
    slanted = augment_batch(image, np.random.default_rng(0), cfg)
    rows = np.arange(6, 22)
    columns = (slanted[:, rows] * np.arange(28)).sum(axis=2) / slanted[:, rows].sum(axis=2)
    slopes = np.polyfit(rows, columns.T, 1)[0]  # columns per row: the slant of each image
    assert np.all(np.abs(slopes) <= 0.3 + 1e-3) and np.abs(slopes).max() > 0.2
    assert (slopes > 0).any() and (slopes < 0).any()
    residual = columns - (slopes[:, None] * rows + columns.mean(1, keepdims=True)
                          - slopes[:, None] * rows.mean())
    assert np.abs(residual).max() < 0.1  # a straight slanted stroke, not a bent one


ONLY = {name: AugmentConfig(max_shift=0, max_rotation=0, scale_range=(1, 1), max_shear=0,
                           **{f"{name}_probability": 1.0}).without(
    *({"elastic", "blur", "lowres", "thickness"} - {name})) for name in ("elastic", "blur",
                                                                          "lowres")}


def test_elastic_distortion_is_smooth_and_small():
    offsets = elastic_offsets(64, np.random.default_rng(0), ONLY["elastic"])
    assert offsets.shape == (2, 64, 28, 28) and offsets.dtype == np.float32
    assert 0.5 < np.abs(offsets).max() < 8  # pixels: a visible but digit-preserving warp
    # smooth: neighbouring pixels move almost together
    assert np.abs(np.diff(offsets, axis=2)).max() < np.abs(offsets).max() / 3
    images = synthetic_digits(8, np.random.default_rng(0))[0] / np.float32(255)
    warped = augment_batch(images, np.random.default_rng(1), ONLY["elastic"])
    assert not np.allclose(warped, images)
    assert warped.sum() == pytest.approx(images.sum(), rel=0.1)  # ink moved, not created


def test_blur_spreads_ink_and_keeps_its_amount():
    image = np.zeros((4, 28, 28), dtype=np.float32)
    image[:, 14, 14] = 1.0
    blurred = augment_batch(image, np.random.default_rng(0), ONLY["blur"])
    assert (blurred[:, 14, 14] < 0.5).all() and (blurred[:, 14, 15] > 0.02).all()
    np.testing.assert_allclose(blurred.sum(axis=(1, 2)), 1.0, rtol=1e-5)
    np.testing.assert_allclose(blurred[0], blurred[0].T, atol=1e-6)  # isotropic


def test_lowres_keeps_what_the_small_image_can_hold():
    rng = np.random.default_rng(0)
    blocky = np.kron(rng.random((3, 14, 14), dtype=np.float32), np.ones((2, 2), np.float32))
    for nearest in (True, False):
        m = lowres_matrix(14, nearest)
        np.testing.assert_allclose(m.sum(axis=1), 1.0, rtol=1e-6)  # flat stays flat
    np.testing.assert_allclose(lowres_matrix(14, True) @ blocky[0] @ lowres_matrix(14, True).T,
                               blocky[0], atol=1e-6)  # 2x2 blocks survive 14 px exactly
    fine = np.zeros((2, 28, 28), dtype=np.float32)
    fine[:, :, ::2] = 1.0  # one-pixel stripes cannot survive 8-16 px
    coarse = augment_batch(fine, rng, ONLY["lowres"])
    assert coarse.std() < 0.5 * fine.std()


def test_clothes_are_mirrored_and_shifted_never_rotated_or_slanted():
    image = np.zeros((200, 28, 28), dtype=np.float32)
    image[:, 6:22, 4:8] = 1.0  # a bar on the left
    still = replace(CLOTHES, max_shift=0.0, scale_range=(1.0, 1.0))
    out = augment_batch(image, np.random.default_rng(0), still)
    mirrored = out[:, :, 20:24].sum(axis=(1, 2)) > 0.9 * image[0].sum()
    assert 60 < mirrored.sum() < 140  # about half, each exactly mirrored or left alone
    np.testing.assert_allclose(out[mirrored], image[mirrored][:, :, ::-1], atol=1e-5)
    np.testing.assert_allclose(out[~mirrored], image[~mirrored], atol=1e-5)


def test_warp_shifts_content():
    image = np.zeros((1, 28, 28), dtype=np.float32)
    image[0, 10, 10] = 1.0
    rows, cols = np.meshgrid(np.arange(28.0), np.arange(28.0), indexing="ij")
    moved = warp(image, rows[None] - 2, cols[None] + 3)  # output (r, c) reads source (r-2, c+3)
    assert moved[0, 12, 7] == pytest.approx(1.0)
    assert moved.sum() == pytest.approx(1.0)


def test_prefetch_keeps_order_and_stops_when_closed():
    assert list(prefetch(lambda i: i * i, range(2, 6))) == [4, 9, 16, 25]
    assert list(prefetch(lambda i: i, range(3, 3))) == []
    made = []
    batches = prefetch(lambda i: made.append(i) or i, range(100))
    assert next(batches) == 0
    batches.close()
    assert made == [0, 1]  # the batch being prepared when the loop stopped, and no more


# -- reports -----------------------------------------------------------------------------------
def test_confusion_and_per_class_accuracy():
    confusion = confusion_matrix(np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2]), classes=4)
    assert confusion[0].tolist() == [1, 1, 0, 0]
    assert per_class_accuracy(confusion) == [0.5, 1.0, 1.0, 0.0]


def test_progress_bar_on_a_terminal():
    stream = io.StringIO()
    progress = Progress(stream=stream, bar=True)
    progress.epoch_start(1, 3, batches=40)
    for _ in range(40):
        progress.batch_end(0.5, 32)
    assert progress._bar.n == 40 and "img_s=" in progress._bar.postfix  # tqdm redraws lazily
    row = {"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "val_loss": 0.4,
           "val_accuracy": 0.91, "lr": 0.1, "seconds": 1.0, "images_per_second": 1280.0}
    progress.epoch_end(row, 3, best=True)
    text = stream.getvalue()
    assert "epoch 1/3:" in text and "/40 [" in text
    assert text.rstrip().endswith("1,280 img/s  *")


# -- CLI usage errors: one line on stderr, exit status 2 ------------------------------------------
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--epochs", "0"], "--epochs: must be a positive integer"),
        (["--lr", "-1"], "--lr: must be in (0, inf)"),
        (["--lr", "abc"], "--lr: invalid number value"),
        (["--momentum", "1.5"], "--momentum: must be in [0, 1)"),
        (["--activation", "gelu"], "--activation: invalid choice"),
        (["--schedule", "linear"], "--schedule: invalid choice"),
        (["--bogus"], "unrecognized arguments: --bogus"),
        (["--data-dir", "{tmp}/none", "--no-download"], "MNIST not found in"),
        (["--data-dir", "{tmp}", "--data-file", "{tmp}/x.pkl.gz"], "either --data-dir or"),
        (["--data-file", "{tmp}/missing.pkl.gz"], "no such file"),
        (["--resume"], "no checkpoint at"),
        (["--out", "{tmp}"], "is a directory"),
        (["--train-size", "999999", "--data-dir", "{synth}"], "exceeds the 400 training images"),
        (["--help-me"], "unrecognized arguments"),
        (["--hidden-dim", "8"], "--hidden-dim only apply to --arch mlp; add --arch mlp"),
        (["--arch", "mlp", "--channels", "4,8"], "--channels only apply to --arch cnn"),
        (["--channels", "4,x"], "--channels: must be comma-separated integers"),
        (["--dataset", "cifar"], "--dataset: invalid choice"),
        (["--dataset", "fashion-mnist", "--data-file", "{tmp}/x.pkl.gz"], "for --dataset"),
        (["--channels", "4,8,16", "--data-dir", "{synth}"], "kernel_sizes needs 3 entries"),
        (["--kernel-sizes", "13,13", "--paddings", "0,0", "--data-dir", "{synth}"],
         "leaves no pixels"),
        (["--threads", "-1"], "--threads: must be >= 0"),
        (["--checkpoint-dir", "{synth}/t10k-labels-idx1-ubyte.gz"], "--checkpoint-dir"),
        (["--not-digits", "0", "--clothes", "10"], "--clothes adds pictures of clothes"),
        (["--refuse-digits", "0"], "--refuse-digits: must be in (0, 0.5)"),
        (["--refuse-digits", "0.5"], "--refuse-digits: must be in (0, 0.5)"),
        (["--not-digits", "0", "--refuse-digits", "0.01"], "it needs --not-digits N"),
        (["--dataset", "fashion-mnist", "--typeset-digits", "10"], "has no digits"),
    ],
)
def test_usage_errors(tmp_path, capsys, synth_dir, flags, message):
    argv = [f.format(tmp=tmp_path, synth=synth_dir) for f in flags]
    if "--checkpoint-dir" not in argv:
        argv += ["--checkpoint-dir", str(tmp_path / "ck")]
    if "--out" not in argv:
        argv += ["--out", str(tmp_path / "m.npz")]
    assert exit_status(argv) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


def exit_status(argv: list[str]) -> int:
    """main()'s return value, or the status argparse exits with."""
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


# -- training runs -----------------------------------------------------------------------------
def test_clothes_come_from_fashion_mnist_or_a_warning_says_there_are_none(tmp_path, synth_dir,
                                                                          monkeypatch, capsys):
    """--clothes reads Fashion-MNIST from its own place ($FASHION_MNIST_DIR here: synthetic
    files); where it cannot be had, the run warns, trains without and its file says so."""
    flags = ("--epochs", "1", "--not-digits", "30", "--clothes", "20", "--no-download",
             "--typed-letters", "0", "--typed-digits", "0")
    fashion = write_synthetic_mnist(tmp_path / "fashion", seed=1)
    monkeypatch.setenv("FASHION_MNIST_DIR", str(fashion))
    assert run(tmp_path, synth_dir, *flags, "--pen-digits", "10", "--typeset-digits", "10") == 0
    meta = load(tmp_path / "model.npz")[1]
    assert meta["training"]["clothes"] == 20 and meta["training"]["train_images"] == 470
    assert meta["training"]["typeset_digits"] == 10
    assert "warning" not in capsys.readouterr().out

    # a stricter decision for the same run: resuming the finished run re-decides, no training
    assert run(tmp_path, synth_dir, *flags, "--pen-digits", "10", "--typeset-digits", "10",
               "--resume", "--refuse-digits", "0.2", out="strict.npz") == 0
    strict = load(tmp_path / "strict.npz")[1]
    assert strict["training"]["refuse_digits"] == 0.2 and meta["training"]["refuse_digits"] == 0.001
    assert strict["decision"]["threshold"] > meta["decision"]["threshold"]
    assert_same_arrays(arrays_of(tmp_path / "strict.npz"), arrays_of(tmp_path / "model.npz"))
    capsys.readouterr()

    monkeypatch.setenv("FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    assert run(tmp_path, synth_dir, *flags, out="without.npz", ckpt="ck2") == 0
    out = capsys.readouterr().out
    assert "warning: no pictures of clothes among the not-digits" in out
    meta = load(tmp_path / "without.npz")[1]
    assert meta["training"]["clothes"] == 0 and meta["training"]["train_images"] == 430


def test_typed_letters_come_from_the_machines_fonts_or_a_warning_says_there_are_none(
        tmp_path, synth_dir, monkeypatch, capsys):
    """By default a quarter as many typed letters and a sixth as many typed digits as
    generated not-digits; without the fonts, the run warns, trains without and its file says
    so."""
    from trainer import typefaces

    flags = ("--epochs", "1", "--not-digits", "30", "--pen-digits", "0")
    if typefaces.font_files():
        assert run(tmp_path, synth_dir, *flags) == 0
        meta = load(tmp_path / "model.npz")[1]
        assert (meta["training"]["typed_letters"], meta["training"]["typed_digits"]) == (8, 5)
        assert meta["training"]["typed_fonts"] == [f.name for f in typefaces.font_files()]
        assert meta["training"]["train_images"] == 400 + 30 + 8 + 5
        assert "warning" not in capsys.readouterr().out
    monkeypatch.setattr(typefaces, "FONT_DIRS", (tmp_path / "no-fonts",))
    assert run(tmp_path, synth_dir, *flags, out="without.npz", ckpt="ck2") == 0
    assert "warning: no typed letters among the not-digits" in capsys.readouterr().out
    meta = load(tmp_path / "without.npz")[1]
    assert meta["training"]["typed_letters"] == meta["training"]["typed_digits"] == 0
    assert meta["training"]["train_images"] == 430 and meta["training"]["typed_fonts"] == []


def test_train_writes_model_metrics_and_report(tmp_path, synth_dir, capsys):
    assert run(tmp_path, synth_dir, "--epochs", "2") == 0
    out = capsys.readouterr().out
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and epoch_lines[0].startswith("epoch 1/2  loss ")
    assert "\r" not in out  # no progress bar redraws when stdout is not a terminal
    assert "confusion matrix" in out and "test accuracy" in out

    model, meta = load(tmp_path / "model.npz")
    assert set(meta) >= {"preprocessing", "training", "metrics", "data", "created",
                         "digitgrad_version"}
    assert meta["training"]["epochs_run"] == 2 and meta["training"]["hidden_dim"] == 32
    assert meta["training"]["arch"] == "mlp" and meta["dataset"] == "mnist"
    assert "classes" not in meta  # digits: the index is the label
    assert meta["metrics"]["test_accuracy"] > 0.9
    assert len(meta["metrics"]["per_class_accuracy"]) == 10
    assert meta["data"] == load_mnist(synth_dir).checksums
    assert meta["created"].endswith("+00:00")

    rows = (tmp_path / "model.metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,train_accuracy,val_loss,val_accuracy,lr")
    assert len(rows) == 3
    report = json.loads((tmp_path / "model.report.json").read_text())
    assert np.array(report["confusion_matrix"]).sum() == 500
    assert report["test_accuracy"] == meta["metrics"]["test_accuracy"]


def test_augmentation_is_on_by_default_and_can_be_turned_off(tmp_path, synth_dir):
    def trained(*flags: str) -> bool:
        argv = ["--data-dir", str(synth_dir), "--out", str(tmp_path / "m.npz"), "--checkpoint-dir",
                str(tmp_path / "ck"), "--arch", "mlp", "--hidden-dim", "8", "--train-size", "64",
                "--epochs", "1", "--not-digits", "0", "--pen-digits", "0",
                "--quiet", *flags]
        assert cli.main(argv) == 0
        training = load(tmp_path / "m.npz")[1]["training"]
        return tuple(training[k] for k in ("augment", "elastic", "blur", "lowres"))

    assert trained() == (True, True, True, True)
    assert trained("--no-augment") == (False, True, True, True)
    assert trained("--no-blur", "--no-lowres") == (True, True, False, False)
    help_text = build_parser().format_help()
    for switch in ("augment", "elastic", "blur", "lowres"):
        assert f"--{switch}, --no-{switch}" in help_text


def test_quiet_prints_nothing(tmp_path, synth_dir, capsys):
    assert run(tmp_path, synth_dir, "--epochs", "1", "--quiet") == 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_same_seed_gives_identical_arrays(tmp_path, synth_dir):
    for name, seed in (("a", "3"), ("b", "3"), ("c", "4")):
        assert run(tmp_path, synth_dir, "--epochs", "2", "--seed", seed, "--augment", "--quiet",
                   out=f"{name}.npz", ckpt=f"ck_{name}") == 0
    assert_same_arrays(arrays_of(tmp_path / "a.npz"), arrays_of(tmp_path / "b.npz"))
    assert not np.array_equal(arrays_of(tmp_path / "a.npz")["layers.0.W"],
                              arrays_of(tmp_path / "c.npz")["layers.0.W"])


@pytest.mark.parametrize(("arch", "first", "total"), [(SMALL_MLP, 2, 4), (SMALL_CNN, 1, 2)],
                         ids=["mlp", "cnn"])  # the CNN's epochs cost more (10,000 to validate)
def test_resume_after_some_epochs_equals_a_straight_run(tmp_path, synth_dir, arch, first, total):
    common = ("--schedule", "step", "--lr-step-epochs", "1", "--quiet")
    assert run(tmp_path, synth_dir, "--epochs", str(total), *common, out="straight.npz",
               ckpt="ck_straight", arch=arch) == 0
    assert run(tmp_path, synth_dir, "--epochs", str(first), *common, out="two.npz",
               ckpt="ck_two", arch=arch) == 0
    assert run(tmp_path, synth_dir, "--resume", "--epochs", str(total), "--quiet", out="two.npz",
               ckpt="ck_two", arch=()) == 0  # the architecture comes from the checkpoint
    assert_same_arrays(arrays_of(tmp_path / "straight.npz"), arrays_of(tmp_path / "two.npz"))
    # the last parameters and the velocities too, not only the exported best ones
    assert_same_arrays(arrays_of(tmp_path / "ck_straight" / CHECKPOINT_NAME),
                       arrays_of(tmp_path / "ck_two" / CHECKPOINT_NAME))
    assert len((tmp_path / "two.metrics.csv").read_text().splitlines()) == total + 1


class _CtrlCAfter(Progress):
    """Progress that presses Ctrl-C (a real SIGINT) at a given batch of a given epoch."""

    at: tuple[int, int] = (2, 5)

    def epoch_start(self, epoch, epochs, batches, done=0):
        self._epoch, self._batch = epoch, done
        super().epoch_start(epoch, epochs, batches, done)

    def batch_end(self, loss, images):
        self._batch += 1
        if (self._epoch, self._batch) == self.at:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_writes_checkpoint_and_resume_is_exact(tmp_path, synth_dir, monkeypatch, capsys):
    common = ("--epochs", "3", "--augment", "--warmup-epochs", "0.5", "--quiet")
    handler = signal.getsignal(signal.SIGINT)  # Python's, or SIG_IGN under `nohup ... &`
    assert run(tmp_path, synth_dir, *common, out="straight.npz", ckpt="ck_straight") == 0
    (tmp_path / "cut.npz").write_bytes(b"previous model")
    monkeypatch.setattr(trainer.run, "Progress", _CtrlCAfter)
    assert run(tmp_path, synth_dir, *common, out="cut.npz", ckpt="ck_cut") == 1
    err = capsys.readouterr().err
    assert "interrupted in epoch 2" in err
    assert "resume with: python -m trainer" in err and "--resume" in err
    assert (tmp_path / "cut.npz").read_bytes() == b"previous model"
    checkpoint = load_checkpoint(tmp_path / "ck_cut" / CHECKPOINT_NAME)
    assert (checkpoint.state.epoch, checkpoint.state.batch) == (1, 5)
    assert signal.getsignal(signal.SIGINT) is handler  # the handler before the run, restored
    monkeypatch.setattr(trainer.run, "Progress", Progress)
    assert run(tmp_path, synth_dir, "--resume", "--augment", "--quiet", out="cut.npz",
               ckpt="ck_cut") == 0
    assert_same_arrays(arrays_of(tmp_path / "straight.npz"), arrays_of(tmp_path / "cut.npz"))
    assert_same_arrays(arrays_of(tmp_path / "ck_straight" / CHECKPOINT_NAME),
                       arrays_of(tmp_path / "ck_cut" / CHECKPOINT_NAME))


def test_resume_refuses_other_hyper_parameters(tmp_path, synth_dir, capsys):
    assert run(tmp_path, synth_dir, "--epochs", "1", "--quiet") == 0
    assert run(tmp_path, synth_dir, "--resume", "--lr", "0.5", "--epochs", "2") == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (checkpoint: 0.05)" in err and "Traceback" not in err
    # a ten-output checkpoint has no decision to make stricter (--not-digits not given again)
    argv = ["--data-dir", str(synth_dir), "--out", str(tmp_path / "model.npz"),
            "--checkpoint-dir", str(tmp_path / "ckpt"), "--resume", "--refuse-digits", "0.01"]
    assert exit_status(argv) == 2
    assert "the checkpoint's model has none" in capsys.readouterr().err


def test_a_version_1_checkpoint_resumes_as_the_mlp_it_was(tmp_path, synth_dir):
    """Checkpoints of digitgrad 0.1 name no arch, dataset or new augmentations: MLP, MNIST, off."""
    assert run(tmp_path, synth_dir, "--epochs", "1", "--quiet") == 0
    path = tmp_path / "ckpt" / CHECKPOINT_NAME
    arrays, meta = read_checkpoint(path)
    for name in ("arch", "dataset", "elastic", "blur", "lowres", "channels", "kernel_sizes",
                 "paddings", "hidden_dims"):
        del meta["config"][name]
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps({**meta, "format_version": 1}))})
    assert run(tmp_path, synth_dir, "--resume", "--epochs", "2", "--quiet", arch=()) == 0
    model, meta = load(tmp_path / "model.npz")
    assert model.config()["class"] == "DeepNetwork" and meta["training"]["epochs_run"] == 2
    assert (meta["training"]["arch"], meta["training"]["elastic"]) == ("mlp", False)


def test_a_checkpoint_naming_the_dense_widths_fc_dims_resumes_as_the_cnn_it_was(tmp_path,
                                                                                synth_dir):
    """Checkpoints written before the rename call the CNN's hidden_dims fc_dims."""
    assert run(tmp_path, synth_dir, "--epochs", "1", "--quiet", arch=SMALL_CNN) == 0
    path = tmp_path / "ckpt" / CHECKPOINT_NAME
    arrays, meta = read_checkpoint(path)
    meta["config"]["fc_dims"] = meta["config"].pop("hidden_dims")
    assert meta["config"]["fc_dims"] == [32]  # not the default (120, 84): it must be read
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta))})
    assert run(tmp_path, synth_dir, "--resume", "--epochs", "2", "--quiet", arch=()) == 0
    model, meta = load(tmp_path / "model.npz")
    assert model.config()["hidden_dims"] == [32] and meta["training"]["epochs_run"] == 2
    assert meta["training"]["hidden_dims"] == [32] and "fc_dims" not in meta["training"]


def test_a_checkpoint_whose_arrays_do_not_fit_is_one_line_not_a_traceback(tmp_path, synth_dir,
                                                                           capsys):
    assert run(tmp_path, synth_dir, "--epochs", "1", "--quiet") == 0
    path = tmp_path / "ckpt" / CHECKPOINT_NAME
    arrays, meta = read_checkpoint(path)
    arrays["model/layers.0.W"] = arrays["model/layers.0.W"][:, :3]
    np.savez(path, **arrays, **{META_KEY: np.array(json.dumps(meta))})
    assert run(tmp_path, synth_dir, "--resume", "--epochs", "2", "--quiet", arch=()) == 2
    err = capsys.readouterr().err
    assert "does not fit its own configuration" in err and "layers.0.W" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_resume_refuses_other_data(tmp_path, synth_dir, capsys):
    assert run(tmp_path, synth_dir, "--epochs", "1", "--quiet") == 0
    other = write_synthetic_mnist(tmp_path / "other", seed=1)
    assert run(tmp_path, other, "--resume", "--epochs", "2") == 2
    assert "checksums differ" in capsys.readouterr().err


def test_divergence_stops_with_a_hint_and_keeps_the_model(tmp_path, synth_dir, capsys):
    (tmp_path / "model.npz").write_bytes(b"the good model")
    assert run(tmp_path, synth_dir, "--epochs", "1", "--lr", "1e6", "--schedule", "constant") == 1
    err = capsys.readouterr().err
    assert "training diverged" in err and "lower the learning rate (e.g. --lr 1e+05)" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "model.npz").read_bytes() == b"the good model"


def test_early_stopping(tmp_path, synth_dir, capsys):
    # the synthetic set is learnt perfectly at once, so validation accuracy cannot improve
    assert run(tmp_path, synth_dir, "--epochs", "10", "--patience", "2") == 0
    assert "early stopping" in capsys.readouterr().out
    _, meta = load(tmp_path / "model.npz")
    assert meta["training"]["stopped_early"] and meta["training"]["epochs_run"] < 10
    assert meta["training"]["epochs_run"] == meta["training"]["best_epoch"] + 2


def test_lab_pickle_data_file(tmp_path):
    rng = np.random.default_rng(0)
    splits = []
    for n in (300, 100, 100):
        images, labels = synthetic_digits(n, rng)
        splits.append(((images / np.float32(255)).reshape(n, 784), labels.astype(np.int64)))
    path = tmp_path / "mnist.pkl.gz"
    with gzip.open(path, "wb") as f:
        pickle.dump(tuple(splits), f, protocol=2)
    argv = ["--data-file", str(path), "--out", str(tmp_path / "m.npz"), "--checkpoint-dir",
            str(tmp_path / "ck"), *SMALL_MLP, "--epochs", "2", "--no-augment", "--not-digits", "0",
            "--pen-digits", "0", "--quiet"]
    assert cli.main(argv) == 0
    _, meta = load(tmp_path / "m.npz")
    assert list(meta["data"]) == ["mnist.pkl.gz"]
    assert meta["metrics"]["test_accuracy"] > 0.9


def test_plots(tmp_path, synth_dir, capsys):
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert run(tmp_path, synth_dir, "--epochs", "1", "--plots") == 2
        assert "pip install 'digitgrad[plots]'" in capsys.readouterr().err
        return
    # 40 training images: mistakes enough for the gallery
    assert run(tmp_path, synth_dir, "--epochs", "1", "--train-size", "40", "--plots",
               "--quiet") == 0
    for name in ("model.curves.png", "model.confusion.png", "model.mistakes.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_short_real_training_run(tmp_path, mnist_dir):
    """The default CNN: one epoch on 10,000 real images clears 90% on the test set; the file
    reproduces it."""
    argv = ["--data-dir", str(mnist_dir), "--train-size", "10000", "--epochs", "1",
            "--out", str(tmp_path / "m.npz"), "--checkpoint-dir", str(tmp_path / "ck"), "--quiet"]
    assert cli.main(argv) == 0
    model, meta = load(tmp_path / "m.npz")
    assert meta["metrics"]["test_accuracy"] >= 0.90
    assert model.config()["class"] == "ConvNetwork"
    test = load_mnist(mnist_dir).test
    with no_grad():
        logits = model(ComputationGraphNode(to_model_input(test.images, meta["preprocessing"])))
    # the answer is the likeliest digit (models.decision), whatever the not-a-digit output says
    answers = scores(logits.value, Decision.from_metadata(meta, model.dim_output))
    accuracy = float(np.mean(answers.probabilities.argmax(axis=1) == test.labels))
    assert accuracy == meta["metrics"]["test_accuracy"]
    assert meta["metrics"]["test_refused"] < 0.05 and meta["metrics"]["test_ece"] < 0.05


def test_conftest_trained_model_is_good_enough_to_serve(trained_model_path):
    model, meta = load(trained_model_path)
    assert meta["metrics"]["test_accuracy"] >= 0.97
    assert model.config()["class"] == "ConvNetwork" and meta["training"]["epochs_run"] == 1


def test_ctrl_c_before_training_exits_at_once(tmp_path, synth_dir, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer.run, "load_mnist", interrupted)
    assert run(tmp_path, synth_dir, "--epochs", "1") == 1
    err = capsys.readouterr().err
    assert err.startswith("interrupted after") and "Traceback" not in err


def test_blas_threads_limit():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    with cli.blas_threads(1):
        blas = [p for p in threadpoolctl.threadpool_info() if p["user_api"] == "blas"]
        assert blas and all(p["num_threads"] == 1 for p in blas)
    with cli.blas_threads(0):  # 0 leaves numpy's default alone
        pass
