"""One training run, after the command line was parsed: data, model, fit, test, outputs."""

from __future__ import annotations

import shlex
import sys
from datetime import datetime, timezone

import numpy as np

from models import ModelFileError, digitgrad_version, preprocessing_config, save
from models.decision import scores
from trainer import typefaces
from trainer.calibrate import calibrate, calibration_set, logits_of
from trainer.callbacks import CheckpointWriter, EarlyStopping, MetricsLog
from trainer.checkpoints import Checkpoint, load_checkpoint
from trainer.cli import EXIT_FAILURE, EXIT_OK
from trainer.config import Job, TrainConfig, UsageError
from trainer.data import DATASETS, MNIST, DataError, Split, load_mnist
from trainer.factory import build_model, build_optimizer
from trainer.flags import flag_ones
from trainer.loop import Session, StopFlag, TrainingInterruptedError, fit, prepare
from trainer.mistakes import confident_mistakes
from trainer.report import (
    Progress,
    confusion_matrix,
    expected_calibration_error,
    format_test_report,
    per_class_accuracy,
    write_json,
    write_metrics_csv,
    write_plots,
)
from trainer.synthetic import add_synthetic


def resume_config(job: Job, checkpoint: Checkpoint, progress: Progress) -> TrainConfig:
    """The checkpoint's config, with the few flags that may change on resume applied."""
    config = checkpoint.config
    current = config.to_dict()
    given = TrainConfig(**{**vars(config), **job.given}).to_dict()  # lists, as in ``current``
    conflicts = [
        f"--{name.replace('_', '-')} {_flag_text(given[name])} "
        f"(checkpoint: {_flag_text(current[name])})"
        for name in job.given
        if given[name] != current[name] and name not in TrainConfig.RESUMABLE_CHANGES
    ]
    if conflicts:
        raise UsageError("cannot resume with different hyper-parameters: " + ", ".join(conflicts)
                         + "; drop those flags, or start afresh without --resume")
    for name in TrainConfig.RESUMABLE_CHANGES:
        if name in job.given:
            setattr(config, name, job.given[name])
    if "refuse_digits" in job.given and not config.not_digits:
        raise UsageError("--refuse-digits sets the threshold of the \"not a digit\" decision; "
                         "the checkpoint's model has none (trained with --not-digits 0)")
    if config.epochs != current["epochs"] and (
        config.schedule == "cosine" or config.warmup_epochs
    ):
        progress.message(f"note: --epochs changed from {current['epochs']} to {config.epochs}: "
                         f"the {config.schedule} schedule is recomputed over the new total")
    if checkpoint.state.epoch > config.epochs:
        raise UsageError(f"the checkpoint has already done {checkpoint.state.epoch} epochs; "
                         f"pass --epochs {checkpoint.state.epoch} or more")
    return config


def _flag_text(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def resume_command(argv: list[str]) -> str:
    """The command that continues this run."""
    args = list(argv)
    if not any(a == "--resume" or a.startswith("--resume=") for a in args):
        args.append("--resume")
    return shlex.join(["python", "-m", "trainer", *args])


def load_data(job: Job, dataset: str, own_place: bool = False) -> MNIST:
    """The data set's three splits, downloading missing files unless told not to; from
    ``--data-dir``/``--data-file``, or with ``own_place`` from the data set's default place."""
    def log(message: str) -> None:  # download progress: stderr, so stdout stays the epoch log
        if not job.quiet:
            print(message, file=sys.stderr, flush=True)

    data_dir, data_file = (None, None) if own_place else (job.data_dir, job.data_file)
    return load_mnist(data_dir, data_file, allow_download=job.download,
                      progress=not job.quiet and sys.stderr.isatty(), log=log, dataset=dataset)


def load_clothes(job: Job, config: TrainConfig, progress: Progress) -> np.ndarray | None:
    """Fashion-MNIST's training images for ``--clothes``; when the data set cannot be had (no
    copy, no network), a warning, and ``config.clothes`` set to 0: the run, its checkpoints
    and its model file then say that it trained without them."""
    try:
        return load_data(job, "fashion-mnist", own_place=True).train.images
    except DataError as exc:
        progress.message(f"warning: no pictures of clothes among the not-digits: {exc}")
        config.clothes = 0
        return None


def typed_fonts(config: TrainConfig, progress: Progress) -> list:
    """The fonts for ``--typed-letters`` and ``--typed-digits``; when the machine has none of
    them, a warning, and both set to 0 (as ``load_clothes`` does without its data set)."""
    fonts = typefaces.font_files()
    if not fonts:
        progress.message("warning: no typed letters among the not-digits: no fonts in "
                         + ", ".join(map(str, typefaces.FONT_DIRS))
                         + " (Debian: apt-get install fonts-dejavu-core fonts-dejavu-extra "
                           "fonts-liberation)")
        config.typed_letters = config.typed_digits = 0
    return fonts


def train(job: Job, stop: StopFlag) -> int:
    """Everything after parsing; raises UsageError, DataError, DivergenceError."""
    progress = Progress(quiet=job.quiet)
    job.paths.check()
    checkpoint_path = job.resume_from()
    checkpoint = None
    if checkpoint_path is not None:
        if not checkpoint_path.exists():
            raise UsageError(f"--resume: no checkpoint at {checkpoint_path}; pass "
                             "--checkpoint-dir DIR of the interrupted run, or start afresh "
                             "without --resume")
        checkpoint = load_checkpoint(checkpoint_path)
        config = resume_config(job, checkpoint, progress)
    else:
        config = job.config

    data = load_data(job, config.dataset)
    if checkpoint is not None and checkpoint.meta.get("data") != data.checksums:
        raise UsageError(f"the data in {data.source} is not the data {checkpoint_path} was "
                         "trained on (checksums differ); pass the same --data-dir/--data-file")
    train_split = data.train
    if config.train_size is not None:
        if config.train_size > len(train_split):
            raise UsageError(f"--train-size {config.train_size} exceeds the "
                             f"{len(train_split)} training images")
        train_split = Split(train_split.images[: config.train_size],
                            train_split.labels[: config.train_size])
    # the normalisation constants come from the training images only
    preprocessing = (checkpoint.meta["preprocessing"] if checkpoint is not None else
                     preprocessing_config(float(train_split.images.mean()),
                                          float(train_split.images.std())))
    flagged = 0
    if config.flag_ones:
        # after the normalisation constants, which thus stay those of the images as they are
        # (and the same with and without --flag-ones); in place: see trainer.flags. The arrays
        # are this run's own, read from the files above, and nothing reads the unflagged
        # training images after this: no copy (157 MB held for the whole run).
        indices, images = flag_ones(train_split.images, train_split.labels, config.seed)
        train_split.images[indices] = images
        flagged = len(indices)
        progress.message(f"drew a flag on {flagged:,} of the {len(train_split):,} training images "
                         "(upright 1s; --no-flag-ones leaves them as they are)")
    fonts = []
    if (config.not_digits or config.pen_digits or config.typeset_digits
            or config.typed_digits):
        pictures = load_clothes(job, config, progress) if config.clothes else None
        # after the normalisation constants too: they stay those of the data set's images
        fonts = (typed_fonts(config, progress) if config.typed_letters or config.typed_digits
                 else [])
        train_split = add_synthetic(train_split, config.pen_digits, config.not_digits,
                                    config.seed, pictures, config.clothes,
                                    config.typeset_digits, config.typed_letters,
                                    config.typed_digits, fonts)
        progress.message(f"added {config.pen_digits:,} pen-drawn and {config.typeset_digits:,} "
                         f"typeset digits, {config.not_digits:,} generated images that are not "
                         f"digits, {config.clothes:,} pictures of clothes and "
                         f"{config.typed_letters:,} typed letters and symbols, and "
                         f"{config.typed_digits:,} typed digits (--pen-digits, --typeset-digits, "
                         "--not-digits, --clothes, --typed-letters, --typed-digits)")
    prepared = prepare(train_split, data.val, preprocessing, config.augment_config())

    try:
        model = build_model(config)
    except ValueError as exc:
        raise UsageError(f"--arch {config.arch}: {exc}") from exc
    session = Session(model, build_optimizer(model, config), config)
    if checkpoint is not None:
        try:
            checkpoint.restore(session)
        except (ValueError, KeyError) as exc:  # arrays that do not fit the checkpoint's config
            raise ModelFileError(checkpoint_path, f"does not fit its own configuration ({exc})"
                                 "; start afresh without --resume") from exc
        progress.message(f"resuming from {checkpoint_path}: epoch {session.state.epoch}"
                         + (f", batch {session.state.batch}" if session.state.batch else "")
                         + f" of {config.epochs}")
    progress.message(
        f"training {model!r} ({model.num_parameters():,} parameters) on {len(train_split):,} "
        f"images from {data.source}; validating on {len(data.val):,}"
    )
    callbacks = [
        EarlyStopping(config.patience, progress),
        CheckpointWriter(job.paths.checkpoint,
                         {"preprocessing": preprocessing, "data": data.checksums}),
        MetricsLog(job.paths.metrics),
    ]
    try:
        # Ctrl-C asks for a clean stop only while training; before, it interrupts at once
        with stop.on_sigint(notify=lambda m: print(m, file=sys.stderr, flush=True)):
            fit(session, prepared, callbacks, progress, stop)
    except TrainingInterruptedError as exc:
        print(f"interrupted in epoch {exc.epoch}: checkpoint written to {job.paths.checkpoint}\n"
              f"resume with: {resume_command(job.argv)}", file=sys.stderr)
        return EXIT_FAILURE

    export(session, data, preprocessing, len(train_split), flagged, job, progress,
           [f.name for f in fonts])
    return EXIT_OK


def export(session: Session, data: MNIST, preprocessing: dict, train_images: int,
           flagged_ones: int, job: Job, progress: Progress, fonts: list[str]) -> None:
    """Test the best-validation parameters (the test set's only use) and write every output;
    ``fonts``: the files the typed letters and digits were set in (the model's record)."""
    model, state, config, paths = session.model, session.state, session.config, job.paths
    model.load_state_dict(session.best)
    decision, calibration = None, {}
    if config.not_digits:
        decision, calibration = calibrate(
            model, calibration_set(data.val.images, data.val.labels, config.seed), preprocessing,
            config.refuse_digits)
    test = scores(logits_of(model, data.test.images, preprocessing), decision)
    predictions = test.probabilities.argmax(axis=1)
    right = predictions == data.test.labels
    test_accuracy = float(right.mean())
    confusion = confusion_matrix(data.test.labels, predictions)
    per_class = per_class_accuracy(confusion)
    confidence = test.probabilities.max(axis=1)
    metrics = {
        "val_accuracy": state.best_val_accuracy,
        "test_accuracy": test_accuracy,
        "per_class_accuracy": per_class,
        # expected calibration error of the answers' confidence (15 bins)
        "test_ece": round(expected_calibration_error(confidence, right), 5),
        "train_seconds": round(state.train_seconds, 3),
    }
    if decision is not None:
        metrics["test_refused"] = float(np.mean(~test.is_digit))
        metrics["calibration_refused"] = calibration["refused"]
    training = {**config.to_dict(), "epochs_run": state.epoch, "best_epoch": state.best_epoch,
                "stopped_early": state.stopped_early, "train_images": train_images,
                "flagged_ones": flagged_ones, "typed_fonts": fonts}
    metadata = {
        "preprocessing": preprocessing,
        "training": training,
        "metrics": metrics,
        "data": data.checksums,
        "dataset": config.dataset,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "digitgrad_version": digitgrad_version(),
    }
    if decision is not None:
        metadata["decision"] = decision.to_metadata()
    if list(data.classes) != [str(d) for d in range(10)]:
        # the service answers these names as "label"; digits need none (their index says it)
        metadata["classes"] = list(DATASETS[config.dataset].classes)
    save(model, paths.out, metadata)
    write_metrics_csv(paths.metrics, state.history)
    write_json(paths.report, {**metrics, "confusion_matrix": confusion.tolist(),
                              "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                              "history": state.history, "model": str(paths.out)})
    written = [paths.out, paths.metrics, paths.report]
    if job.plots:
        mistakes = confident_mistakes(model, data.test.images, data.test.labels, predictions,
                                      confidence, preprocessing)
        written += write_plots(paths.out.with_name(paths.out.stem), state.history, confusion,
                               mistakes, (confidence, right)) or []
    progress.message(format_test_report(test_accuracy, per_class, confusion))
    progress.message(f"expected calibration error on the test set {100 * metrics['test_ece']:.2f}%")
    if decision is not None:
        refused = ", ".join(f"{k} {100 * v:.1f}%" for k, v in calibration["refused"].items())
        progress.message(
            f"not a digit: threshold {decision.threshold:+.2f} (log-odds), temperature "
            f"{decision.temperature:.2f}; refused {100 * metrics['test_refused']:.2f}% of the "
            f"test digits; held-out refusals: {refused}")
    progress.message(
        f"best validation accuracy {100 * state.best_val_accuracy:.2f}% at epoch "
        f"{state.best_epoch}; test accuracy {100 * test_accuracy:.2f}%; trained "
        f"{state.train_seconds:.1f} s\nwrote " + ", ".join(str(p) for p in written)
    )
