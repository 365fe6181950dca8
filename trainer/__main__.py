"""``python -m trainer`` / ``digitgrad-train``: fit the deep network on MNIST, write the model file.

Exit status: 0 success, 2 usage or data error, 1 anything else: divergence, or Ctrl-C (after
writing a checkpoint; the message says how to resume).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from models import ModelFileError, preprocessing_config, save, to_model_input
from trainer.data import MNIST, DataError, Split, load_mnist
from trainer.loop import (
    CHECKPOINT_NAME,
    Checkpoint,
    DivergenceError,
    Prepared,
    StopFlag,
    TrainConfig,
    TrainingInterruptedError,
    TrainState,
    build_model,
    build_optimizer,
    evaluate,
    fit,
    load_checkpoint,
    prepare,
)
from trainer.report import (
    Progress,
    confusion_matrix,
    format_test_report,
    per_class_accuracy,
    write_json,
    write_metrics_csv,
    write_plots,
)
from trainer.schedule import SCHEDULES

EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2
DIGITGRAD_VERSION = "0.1.0"


class UsageError(Exception):
    """A flag or file the user gave cannot be used; printed on one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


class _HelpFormatter(argparse.HelpFormatter):
    """Shows a flag's default when it has a meaningful one (not None, not an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        hidden = any(action.default is v for v in (None, False, argparse.SUPPRESS))  # 0 shows
        if not hidden and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _float_in(low: float, high: float, low_open: bool = False, high_open: bool = True):
    def parse(text: str) -> float:
        value = float(text)
        ok = math.isfinite(value) and (value > low if low_open else value >= low) and (
            value < high if high_open else value <= high)
        if not ok:
            lo, hi = "(" if low_open else "[", ")" if high_open else "]"
            raise argparse.ArgumentTypeError(f"must be in {lo}{low}, {high}{hi}, got {text}")
        return value

    parse.__name__ = "number"  # argparse names the type in "invalid number value: 'x'"
    return parse


_positive_int.__name__ = _non_negative_int.__name__ = "integer"


def build_parser(suppress_defaults: bool = False) -> argparse.ArgumentParser:
    """The CLI; with ``suppress_defaults`` the namespace holds only the flags actually given."""
    d = TrainConfig()

    def dflt(value):
        return argparse.SUPPRESS if suppress_defaults else value

    parser = _Parser(
        prog="python -m trainer",
        description="Train the digit classifier (an MLP on our numpy autodiff engine) on MNIST "
                    "and write the model file the server loads.",
        formatter_class=_HelpFormatter,
        epilog="Exit status: 0 success, 2 usage or data error, 1 anything else: divergence, "
               "or interrupted by Ctrl-C (a checkpoint was written; rerun with --resume).",
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", metavar="DIR",
                      help="directory with the four MNIST IDX files (gzipped or not); missing "
                           "files are downloaded into it. Default: $MNIST_DIR, else "
                           "~/.cache/digitgrad/mnist")
    data.add_argument("--data-file", metavar="PATH",
                      help="the course lab's mnist.pkl.gz ((train, dev, test) tuple) instead")
    data.add_argument("--no-download", action="store_true", default=dflt(False),
                      help="fail instead of downloading missing files")
    data.add_argument("--train-size", type=_positive_int, metavar="N", default=dflt(d.train_size),
                      help="train on the first N training images only (quick experiments)")

    model = parser.add_argument_group("model")
    model.add_argument("--hidden-dim", type=_positive_int, default=dflt(d.hidden_dim), metavar="N",
                       help="units per hidden layer")
    model.add_argument("--layers", type=_positive_int, default=dflt(d.layers), metavar="N",
                       help="number of hidden layers")
    model.add_argument("--activation", choices=("relu", "tanh"), default=dflt(d.activation),
                       help="hidden activation (Kaiming init for relu, Glorot for tanh)")

    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=_positive_int, default=dflt(d.epochs), metavar="N",
                       help="epochs in total (with --resume: the new total)")
    train.add_argument("--batch-size", type=_positive_int, default=dflt(d.batch_size), metavar="N",
                       help="images per optimizer step")
    train.add_argument("--lr", type=_float_in(0, math.inf, low_open=True), default=dflt(d.lr),
                       help="peak learning rate")
    train.add_argument("--momentum", type=_float_in(0, 1), default=dflt(d.momentum), metavar="M",
                       help="momentum of SGD, in [0, 1)")
    train.add_argument("--nesterov", action="store_true", default=dflt(d.nesterov),
                       help="Nesterov momentum")
    train.add_argument("--weight-decay", type=_float_in(0, math.inf), default=dflt(d.weight_decay),
                       metavar="WD", help="L2 penalty added to the gradient")
    train.add_argument("--schedule", choices=SCHEDULES, default=dflt(d.schedule),
                       help="learning-rate schedule (cosine decays to 0 over --epochs, per batch)")
    train.add_argument("--warmup-epochs", type=_float_in(0, math.inf),
                       default=dflt(d.warmup_epochs),
                       metavar="E", help="linear warm-up length in epochs (may be fractional)")
    train.add_argument("--lr-step-epochs", type=_positive_int, default=dflt(d.lr_step_epochs),
                       metavar="N", help="step schedule: multiply the lr by --lr-gamma every N "
                                         "epochs")
    train.add_argument("--lr-gamma", type=_float_in(0, 1, low_open=True, high_open=False),
                       default=dflt(d.lr_gamma), metavar="G", help="step schedule: decay factor")
    train.add_argument("--augment", action=argparse.BooleanOptionalAction,
                       default=dflt(d.augment),
                       help="random shifts, rotations, scaling, slant and stroke thickness of "
                            "the training images")
    train.add_argument("--patience", type=_non_negative_int, default=dflt(d.patience), metavar="N",
                       help="stop after N epochs without a better validation accuracy (0: never)")
    train.add_argument("--seed", type=_non_negative_int, default=dflt(d.seed), metavar="N",
                       help="same seed and flags give identical parameter arrays")

    out = parser.add_argument_group("output")
    out.add_argument("--out", default=dflt("model.npz"), metavar="PATH",
                     help="model file (written atomically; a failed run leaves it untouched)")
    out.add_argument("--checkpoint-dir", default=dflt("checkpoints"), metavar="DIR",
                     help=f"where {CHECKPOINT_NAME} is written after every epoch")
    out.add_argument("--resume", nargs="?", const=True, default=dflt(False), metavar="CHECKPOINT",
                     help=f"continue from DIR/{CHECKPOINT_NAME} (or CHECKPOINT) exactly where "
                          "it stopped; flags not given are taken from the checkpoint")
    out.add_argument("--metrics", metavar="PATH",
                     help="per-epoch metrics CSV (default: OUT with .metrics.csv)")
    out.add_argument("--report", metavar="PATH",
                     help="final report JSON: test and per-class accuracy, confusion matrix "
                          "(default: OUT with .report.json)")
    out.add_argument("--plots", action="store_true", default=dflt(False),
                     help="also write learning curves and the confusion matrix as PNG "
                          "(needs the plots extra: pip install 'digitgrad[plots]')")
    out.add_argument("--threads", type=_non_negative_int, default=dflt(1), metavar="N",
                     help="BLAS threads for numpy (0: numpy's default). One is fastest for these "
                          "matrix sizes, and by far on a busy machine")
    out.add_argument("--quiet", action="store_true", default=dflt(False),
                     help="print nothing but errors")
    return parser


def _config_from_args(args: argparse.Namespace) -> TrainConfig:
    return TrainConfig.from_dict(vars(args))


def _sibling(out: Path, suffix: str) -> Path:
    """model.npz -> model.metrics.csv and the like."""
    return out.with_name(out.stem + suffix)


def _check_output_path(path: Path, flag: str) -> None:
    """Fail before training, not after it, when an output cannot be written."""
    if path.is_dir():
        raise UsageError(f"{flag} {path} is a directory; give a file path")
    _check_writable_dir(path.parent, f"{flag} {path}")


def _check_writable_dir(directory: Path, what: str) -> None:
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"{what}: {directory} is a file, not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{what}: cannot create {directory} ({exc.strerror or exc})") from exc
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UsageError(f"{what}: {directory} is not writable")


def _resume_config(args, given: dict, checkpoint: Checkpoint, progress: Progress) -> TrainConfig:
    """The checkpoint's config, with the few flags that may change on resume applied."""
    config = checkpoint.config
    current = config.to_dict()
    conflicts = [
        f"--{name.replace('_', '-')} {given[name]} (checkpoint: {current[name]})"
        for name in current
        if name in given and given[name] != current[name] and name not in
        TrainConfig.RESUMABLE_CHANGES
    ]
    if conflicts:
        raise UsageError("cannot resume with different hyper-parameters: " + ", ".join(conflicts)
                         + "; drop those flags, or start afresh without --resume")
    for name in TrainConfig.RESUMABLE_CHANGES:
        if name in given:
            setattr(config, name, given[name])
    if config.epochs != current["epochs"] and (
        config.schedule == "cosine" or config.warmup_epochs
    ):
        progress.message(f"note: --epochs changed from {current['epochs']} to {config.epochs}: "
                         f"the {config.schedule} schedule is recomputed over the new total")
    if checkpoint.state.epoch > config.epochs:
        raise UsageError(f"the checkpoint has already done {checkpoint.state.epoch} epochs; "
                         f"pass --epochs {checkpoint.state.epoch} or more")
    return config


def _resume_command(argv: list[str]) -> str:
    """The command that continues this run."""
    args = list(argv)
    if not any(a == "--resume" or a.startswith("--resume=") for a in args):
        args.append("--resume")
    return shlex.join(["python", "-m", "trainer", *args])


def _load_data(args):
    def log(message: str) -> None:  # download progress: stderr, so stdout stays the epoch log
        if not args.quiet:
            print(message, file=sys.stderr, flush=True)

    return load_mnist(args.data_dir, args.data_file, allow_download=not args.no_download,
                      progress=not args.quiet and sys.stderr.isatty(), log=log)


def train(argv: list[str], args: argparse.Namespace, given: dict, stop: StopFlag) -> int:
    """Everything after parsing; raises UsageError, DataError, DivergenceError."""
    progress = Progress(quiet=args.quiet)
    out = Path(args.out)
    metrics_path = Path(args.metrics) if args.metrics else _sibling(out, ".metrics.csv")
    report_path = Path(args.report) if args.report else _sibling(out, ".report.json")
    _check_output_path(out, "--out")
    _check_output_path(metrics_path, "--metrics")
    _check_output_path(report_path, "--report")
    _check_writable_dir(Path(args.checkpoint_dir), f"--checkpoint-dir {args.checkpoint_dir}")
    if args.data_dir and args.data_file:
        raise UsageError("pass either --data-dir or --data-file, not both")
    if args.plots:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plots needs matplotlib: pip install 'digitgrad[plots]'") from None
    checkpoint_path = Path(args.checkpoint_dir) / CHECKPOINT_NAME
    checkpoint = None
    if args.resume:
        if isinstance(args.resume, str):
            checkpoint_path = Path(args.resume)
        if not checkpoint_path.exists():
            raise UsageError(f"--resume: no checkpoint at {checkpoint_path}; pass "
                             "--checkpoint-dir DIR of the interrupted run, or start afresh "
                             "without --resume")
        checkpoint = load_checkpoint(checkpoint_path)
        config = _resume_config(args, given, checkpoint, progress)
    else:
        config = _config_from_args(args)

    mnist = _load_data(args)
    if checkpoint is not None and checkpoint.meta.get("data") != mnist.checksums:
        raise UsageError(f"the data in {mnist.source} is not the data {checkpoint_path} was "
                         "trained on (checksums differ); pass the same --data-dir/--data-file")
    train_split = mnist.train
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
    data: Prepared = prepare(train_split, mnist.val, preprocessing, config.augment)

    model = build_model(config)
    optimizer = build_optimizer(model, config)
    state, best = TrainState(), None
    if checkpoint is not None:
        best = checkpoint.restore(model, optimizer)
        state = checkpoint.state
        progress.message(f"resuming from {checkpoint_path}: epoch {state.epoch}"
                         + (f", batch {state.batch}" if state.batch else "")
                         + f" of {config.epochs}")
    progress.message(
        f"training {model!r} ({model.num_parameters():,} parameters) on {len(train_split):,} "
        f"images from {mnist.source}; validating on {len(mnist.val):,}"
    )
    ckpt_meta = {"preprocessing": preprocessing, "data": mnist.checksums}
    try:
        # Ctrl-C asks for a clean stop only while training; before, it interrupts at once
        with stop.on_sigint(notify=lambda m: print(m, file=sys.stderr, flush=True)):
            state, best = fit(model, optimizer, data, config, state, checkpoint_path, ckpt_meta,
                              best, metrics_path, progress, stop)
    except TrainingInterruptedError as exc:
        print(f"interrupted in epoch {exc.epoch}: checkpoint written to {exc.path}\n"
              f"resume with: {_resume_command(argv)}", file=sys.stderr)
        return EXIT_FAILURE

    export(model, best, state, config, mnist, preprocessing, len(train_split),
           (out, metrics_path, report_path), args.plots, progress)
    return EXIT_OK


def export(model, best: dict, state: TrainState, config: TrainConfig, mnist: MNIST,
           preprocessing: dict, train_images: int, paths: tuple[Path, Path, Path], plots: bool,
           progress: Progress) -> None:
    """Test the best-validation parameters (the test set's only use) and write every output."""
    out, metrics_path, report_path = paths
    model.load_state_dict(best)
    test_x = to_model_input(mnist.test.images, preprocessing)
    _, test_accuracy, predictions = evaluate(model, test_x, mnist.test.labels)
    confusion = confusion_matrix(mnist.test.labels, predictions)
    per_class = per_class_accuracy(confusion)
    metrics = {
        "val_accuracy": state.best_val_accuracy,
        "test_accuracy": test_accuracy,
        "per_class_accuracy": per_class,
        "train_seconds": round(state.train_seconds, 3),
    }
    training = {**config.to_dict(), "epochs_run": state.epoch, "best_epoch": state.best_epoch,
                "stopped_early": state.stopped_early, "train_images": train_images}
    metadata = {
        "preprocessing": preprocessing,
        "training": training,
        "metrics": metrics,
        "data": mnist.checksums,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "digitgrad_version": DIGITGRAD_VERSION,
    }
    save(model, out, metadata)
    write_metrics_csv(metrics_path, state.history)
    write_json(report_path, {**metrics, "confusion_matrix": confusion.tolist(),
                             "best_epoch": state.best_epoch, "epochs_run": state.epoch,
                             "history": state.history, "model": str(out)})
    written = [out, metrics_path, report_path]
    if plots:
        written += write_plots(_sibling(out, ""), state.history, confusion) or []
    progress.message(format_test_report(test_accuracy, per_class, confusion))
    progress.message(
        f"best validation accuracy {100 * state.best_val_accuracy:.2f}% at epoch "
        f"{state.best_epoch}; test accuracy {100 * test_accuracy:.2f}%; trained "
        f"{state.train_seconds:.1f} s\nwrote " + ", ".join(str(p) for p in written)
    )


def blas_threads(n: int):
    """Limit numpy's BLAS to ``n`` threads inside the block (threadpoolctl; a no-op without it).

    Multi-threaded BLAS on 64-row batches spends more time waking threads than multiplying,
    and on a machine whose cores are busy it is several times slower than one thread.
    """
    if n == 0:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=n, user_api="blas")


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), train, and return the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    given = vars(build_parser(suppress_defaults=True).parse_args(argv))
    stop = StopFlag()
    start = time.perf_counter()
    try:
        with blas_threads(args.threads):
            return train(argv, args, given, stop)
    except (UsageError, DataError, ModelFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except DivergenceError as exc:
        print(f"error: {exc}. {args.out} was not written.", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print(f"interrupted after {time.perf_counter() - start:.0f} s; the last completed "
              f"epoch's checkpoint (if any) is in {args.checkpoint_dir}", file=sys.stderr)
        return EXIT_FAILURE
    except OSError as exc:  # disk full, permission denied while writing outputs
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def run() -> None:
    """Console-script entry point (``digitgrad-train``)."""
    sys.exit(main())


if __name__ == "__main__":
    run()
