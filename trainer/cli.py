"""The command line: flags -> a ``Job`` (config, the flags given, data source, outputs).

argv is parsed once. Hyper-parameter flags have no argparse default (``SUPPRESS``), so the
namespace holds exactly the ones given: they override a checkpoint's on ``--resume`` (or are
refused), and the others come from ``TrainConfig``'s defaults, shown in ``--help``.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import fields

from trainer.config import (
    ARCH_FIELDS,
    CHECKPOINT_NAME,
    DEFAULT_LR,
    Job,
    Paths,
    TrainConfig,
    UsageError,
)
from trainer.data import DATASETS
from trainer.schedule import SCHEDULES

#: The exit statuses of ``python -m trainer`` (the epilog below tells users).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (no usage dump) and exit status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


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


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be comma-separated integers such as 6,16, got {text}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return values


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
_int_list.__name__ = "integer list"


def build_parser() -> argparse.ArgumentParser:
    """The CLI; hyper-parameter flags are absent from the namespace unless given."""
    d = TrainConfig()

    def hyper(group, flag: str, help: str, **kwargs):
        """A TrainConfig flag: no argparse default, TrainConfig's shown in the help."""
        name = flag[2:].replace("-", "_")
        default = getattr(d, name)
        if isinstance(default, tuple):
            default = ",".join(map(str, default))
        hidden = kwargs.get("action") == "store_true" or default is None
        shown = "" if hidden or "default:" in help else (
            f" (default: {default})")
        group.add_argument(flag, default=argparse.SUPPRESS, help=help + shown, **kwargs)

    parser = _Parser(
        prog="python -m trainer",
        description="Train the digit classifier (a convolutional network, or an MLP, on our "
                    "numpy autodiff engine) on MNIST or Fashion-MNIST and write the model file "
                    "the server loads.",
        epilog="Exit status: 0 success, 2 usage or data error, 1 anything else: divergence, "
               "or interrupted by Ctrl-C (a checkpoint was written; rerun with --resume).",
    )
    data = parser.add_argument_group("data")
    hyper(data, "--dataset", "the data set (same IDX format; Fashion-MNIST's ten classes are "
                             "recorded in the model file)", choices=tuple(DATASETS))
    data.add_argument("--data-dir", metavar="DIR",
                      help="directory with the four IDX files (gzipped or not); missing files "
                           "are downloaded into it. Default: $MNIST_DIR, else "
                           "~/.cache/digitgrad/mnist (Fashion-MNIST: $FASHION_MNIST_DIR, else "
                           "/usr/share/datasets/fashion-mnist if installed, else the cache)")
    data.add_argument("--data-file", metavar="PATH",
                      help="the course lab's mnist.pkl.gz ((train, dev, test) tuple) instead")
    data.add_argument("--no-download", action="store_true",
                      help="fail instead of downloading missing files")
    hyper(data, "--train-size", "train on the first N training images only (quick experiments)",
          type=_positive_int, metavar="N")

    model = parser.add_argument_group("model")
    hyper(model, "--arch", "cnn: a convolutional network; mlp: the course lab's DeepNetwork",
          choices=tuple(ARCH_FIELDS))
    hyper(model, "--channels", "cnn: filters of each conv layer (each: conv, ReLU, 2x2 max-pool; "
                               "default: 8,16; fashion-mnist: 16,32)",
          type=_int_list, metavar="C1,C2")
    hyper(model, "--kernel-sizes", "cnn: kernel size of each conv layer", type=_int_list,
          metavar="K1,K2")
    hyper(model, "--paddings", "cnn: zero padding of each conv layer", type=_int_list,
          metavar="P1,P2")
    hyper(model, "--hidden-dims", "cnn: widths of the fully-connected hidden layers (default: "
                                  "120,84; fashion-mnist: 128)",
          type=_int_list, metavar="N1,N2")
    hyper(model, "--hidden-dim", "mlp: units per hidden layer", type=_positive_int, metavar="N")
    hyper(model, "--layers", "mlp: number of hidden layers", type=_positive_int, metavar="N")
    hyper(model, "--activation", "mlp: hidden activation (Kaiming init for relu, Glorot for "
                                 "tanh)", choices=("relu", "tanh"))

    train = parser.add_argument_group("training")
    hyper(train, "--epochs", "epochs in total (with --resume: the new total; default: 18 for "
                             "the MNIST CNN, 20 otherwise)",
          type=_positive_int, metavar="N")
    hyper(train, "--batch-size", "images per optimizer step", type=_positive_int, metavar="N")
    hyper(train, "--lr", "peak learning rate (default: "
          + ", ".join(f"{lr} for {arch}" for arch, lr in DEFAULT_LR.items()) + ")",
          type=_float_in(0, math.inf, low_open=True))
    hyper(train, "--momentum", "momentum of SGD, in [0, 1)", type=_float_in(0, 1), metavar="M")
    hyper(train, "--nesterov", "Nesterov momentum", action="store_true")
    hyper(train, "--weight-decay", "L2 penalty added to the gradient",
          type=_float_in(0, math.inf), metavar="WD")
    hyper(train, "--schedule", "learning-rate schedule (cosine decays to 0 over --epochs, per "
                               "batch)", choices=SCHEDULES)
    hyper(train, "--warmup-epochs", "linear warm-up length in epochs (may be fractional)",
          type=_float_in(0, math.inf), metavar="E")
    hyper(train, "--lr-step-epochs", "step schedule: multiply the lr by --lr-gamma every N "
                                     "epochs", type=_positive_int, metavar="N")
    hyper(train, "--lr-gamma", "step schedule: decay factor",
          type=_float_in(0, 1, low_open=True, high_open=False), metavar="G")
    hyper(train, "--augment", "random shifts, rotations, scaling, slant and stroke thickness of "
                              "the training images, plus the three below (default: on for "
                              "mnist, off for fashion-mnist)",
          action=argparse.BooleanOptionalAction)
    hyper(train, "--elastic", "with --augment: elastic distortion (smooth random warps)",
          action=argparse.BooleanOptionalAction)
    hyper(train, "--blur", "with --augment: Gaussian blur of some images",
          action=argparse.BooleanOptionalAction)
    hyper(train, "--lowres", "with --augment: shrink some images to 8-16 px and enlarge them "
                             "back (low-resolution scans)", action=argparse.BooleanOptionalAction)
    hyper(train, "--flag-ones", "draw a Helvetica-style flag (from the top of the stem, left "
                                "and down) on half the upright training 1s, about 1,500 "
                                "images, once before training, so that typed 1s are not read "
                                "as 7s (default: on for mnist, never fashion-mnist)",
          action=argparse.BooleanOptionalAction)
    hyper(train, "--not-digits", "generated images that are not digits (letters, symbols, "
                                 "doodles, textures) added to the training set as an eleventh "
                                 "class, so that the model and its file can refuse them "
                                 "(0: none, a ten-output model that answers a digit for "
                                 "anything; default: 6000 for mnist, 0 for fashion-mnist)",
          type=_non_negative_int, metavar="N")
    hyper(train, "--pen-digits", "generated pen-drawn digits (tremor, pen widths, open 4s, "
                                 "crossed 7s, flagged 1s...) added to the training set "
                                 "(default: 2000 for mnist, 0 for fashion-mnist)",
          type=_non_negative_int, metavar="N")
    hyper(train, "--typeset-digits", "generated typeset digits (serifs, thick and thin "
                                     "strokes) added to the training set (default: 0)",
          type=_non_negative_int, metavar="N")
    hyper(train, "--clothes", "Fashion-MNIST training images (from $FASHION_MNIST_DIR, "
                              "Debian's dataset-fashion-mnist or the cache, downloaded and "
                              "checked when missing) added as not-digits beside the generated "
                              "ones (needs --not-digits); without the data set, a warning and "
                              "none (default: 0)", type=_non_negative_int, metavar="N")
    hyper(train, "--typed-letters", "letters and symbols set in the machine's DejaVu and "
                                    "Liberation fonts added as not-digits beside the generated "
                                    "ones (needs --not-digits); without those fonts, a warning "
                                    "and none (default: a quarter of --not-digits)",
          type=_non_negative_int, metavar="N")
    hyper(train, "--typed-digits", "digits set in the same fonts added to the training set "
                                   "(without those fonts, none) (default: a sixth of --not-digits)",
          type=_non_negative_int, metavar="N")
    hyper(train, "--refuse-digits", "share of degraded and pen-drawn validation digits the "
                                    "\"not a digit\" threshold may refuse: larger is a "
                                    "stricter model, refusing more doodles and photos and more "
                                    "real digits (needs --not-digits; default: 0.001)",
          type=_float_in(0, 0.5, low_open=True), metavar="SHARE")
    hyper(train, "--patience", "stop after N epochs without a better validation accuracy "
                               "(0: never)", type=_non_negative_int, metavar="N")
    hyper(train, "--seed", "same seed and flags give identical parameter arrays",
          type=_non_negative_int, metavar="N")

    out = parser.add_argument_group("output")
    out.add_argument("--out", default="model.npz", metavar="PATH",
                     help="model file (written atomically; a failed run leaves it untouched) "
                          "(default: %(default)s)")
    out.add_argument("--checkpoint-dir", default="checkpoints", metavar="DIR",
                     help=f"where {CHECKPOINT_NAME} is written after every epoch "
                          "(default: %(default)s)")
    out.add_argument("--resume", nargs="?", const=True, default=False, metavar="CHECKPOINT",
                     help=f"continue from DIR/{CHECKPOINT_NAME} (or CHECKPOINT) exactly where "
                          "it stopped; flags not given are taken from the checkpoint")
    out.add_argument("--metrics", metavar="PATH",
                     help="per-epoch metrics CSV (default: OUT with .metrics.csv)")
    out.add_argument("--report", metavar="PATH",
                     help="final report JSON: test and per-class accuracy, confusion matrix "
                          "(default: OUT with .report.json)")
    out.add_argument("--plots", action="store_true",
                     help="also write learning curves and the confusion matrix as PNG "
                          "(needs the plots extra: pip install 'digitgrad[plots]')")
    out.add_argument("--threads", type=_non_negative_int, default=1, metavar="N",
                     help="BLAS threads for numpy (0: numpy's default). One is fastest: the "
                          "augmentation thread needs the second core, and these matrix sizes "
                          "gain little from more (default: %(default)s)")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    return parser


def parse(argv: list[str]) -> Job:
    """The Job ``argv`` describes; argparse exits (status 2) on malformed flags, UsageError for
    flags that do not fit together."""
    args = vars(build_parser().parse_args(argv))
    names = {f.name for f in fields(TrainConfig)}
    given = {k: v for k, v in args.items() if k in names}
    config = TrainConfig.from_dict(given)
    for arch, arch_fields in ARCH_FIELDS.items():
        wrong = [f"--{n.replace('_', '-')}" for n in arch_fields if n in given]
        if arch != config.arch and wrong and not args["resume"]:
            raise UsageError(f"{', '.join(wrong)} only apply to --arch {arch}; add --arch {arch} "
                             f"or drop them")
    if config.flag_ones and config.dataset != "mnist":
        raise UsageError(f"--flag-ones draws flags on handwritten 1s; --dataset {config.dataset} "
                         "has no digits: drop --flag-ones")
    for flag, value, what in (("--clothes", config.clothes, "pictures of clothes"),
                              ("--typed-letters", config.typed_letters, "typed letters")):
        if value and not config.not_digits:
            raise UsageError(f"{flag} adds {what} as not-digits: it needs --not-digits N "
                             "(N > 0)")
    if "refuse_digits" in given and not config.not_digits:
        raise UsageError("--refuse-digits sets the threshold of the \"not a digit\" decision: "
                         "it needs --not-digits N (N > 0)")
    if (config.not_digits or config.pen_digits or config.typeset_digits
            or config.typed_digits) and (
            config.dataset != "mnist"):
        raise UsageError(f"--not-digits, --pen-digits and --typeset-digits generate digits "
                         f"and what is not one; "
                         f"--dataset {config.dataset} has no digits: pass 0 or drop them")
    if args["data_dir"] and args["data_file"]:
        raise UsageError("pass either --data-dir or --data-file, not both")
    if args["data_file"] and config.dataset != "mnist":
        raise UsageError("--data-file reads the lab's MNIST pickle; for --dataset "
                         f"{config.dataset} pass --data-dir DIR")
    if args["plots"]:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            raise UsageError("--plots needs matplotlib: pip install 'digitgrad[plots]'") from None
    paths = Paths.from_flags(args["out"], args["metrics"], args["report"], args["checkpoint_dir"])
    return Job(config, given, paths, argv=list(argv), data_dir=args["data_dir"],
               data_file=args["data_file"], download=not args["no_download"],
               resume=args["resume"], plots=args["plots"], threads=args["threads"],
               quiet=args["quiet"])
