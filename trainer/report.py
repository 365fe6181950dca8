"""What the trainer shows and writes: progress, the metrics log, the final report and plots."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from models import atomic_write
from trainer.mistakes import Mistake

#: Columns of the metrics log, one row per epoch.
METRIC_COLUMNS = ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr",
                  "seconds", "images_per_second")


class Progress:
    """Per-epoch progress: a tqdm bar on a terminal, one line per epoch otherwise, or nothing.

    Logs in Docker and CI are not terminals, so they get one summary line per epoch instead of
    hundreds of bar redraws.
    """

    def __init__(self, quiet: bool = False, stream: TextIO | None = None, bar: bool | None = None):
        self.stream = stream or sys.stdout
        self.quiet = quiet
        self.bar_enabled = (not quiet) and (self.stream.isatty() if bar is None else bar)
        self._bar = None
        self._start = 0.0
        self._images = 0

    def message(self, text: str) -> None:
        """A line for the user (suppressed by --quiet)."""
        if self.quiet:
            return
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def epoch_start(self, epoch: int, epochs: int, batches: int, done: int = 0) -> None:
        self._start, self._images = time.perf_counter(), 0
        if self.bar_enabled:
            from tqdm import tqdm

            self._bar = tqdm(total=batches, initial=done, desc=f"epoch {epoch}/{epochs}",
                             unit="batch", file=self.stream, leave=False, dynamic_ncols=True)

    def batch_end(self, loss: float, images: int) -> None:
        if self._bar is None:
            return
        self._images += images
        self._bar.update(1)
        if self._bar.n % 20 == 0:  # formatting every batch would cost more than the batch
            rate = self._images / max(time.perf_counter() - self._start, 1e-9)
            self._bar.set_postfix(loss=f"{loss:.4f}", img_s=f"{rate:,.0f}", refresh=False)

    def epoch_end(self, row: dict, epochs: int, best: bool) -> None:
        self.close()
        self.message(format_epoch(row, epochs, best))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def format_epoch(row: dict, epochs: int, best: bool) -> str:
    """``epoch  3/10  loss 0.1234  acc 96.12%  val loss 0.0987  val acc 97.40%  lr ...``."""
    width = len(str(epochs))
    return (
        f"epoch {row['epoch']:>{width}}/{epochs}  loss {row['train_loss']:.4f}  "
        f"acc {100 * row['train_accuracy']:.2f}%  val loss {row['val_loss']:.4f}  "
        f"val acc {100 * row['val_accuracy']:.2f}%  lr {row['lr']:.4g}  "
        f"{row['seconds']:.1f}s  {row['images_per_second']:,.0f} img/s" + ("  *" if best else "")
    )


def write_metrics_csv(path: Path, history: list[dict]) -> None:
    """The whole metrics log, rewritten atomically after every epoch (it is tiny)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, extrasaction="ignore",
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(history)
    data = buffer.getvalue().encode()
    atomic_write(path, lambda f: f.write(data))


def write_json(path: Path, obj) -> None:
    """JSON, pretty and atomic."""
    data = (json.dumps(obj, indent=2, sort_keys=True, allow_nan=False) + "\n").encode()
    atomic_write(path, lambda f: f.write(data))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, classes: int = 10) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, predictions), 1)
    return counts


def per_class_accuracy(confusion: np.ndarray) -> list[float]:
    """Diagonal over row sums (0.0 for a class with no examples)."""
    totals = confusion.sum(axis=1)
    return [float(c / t) if t else 0.0 for c, t in zip(np.diag(confusion), totals)]


#: Bins of the expected calibration error and the reliability diagram (as in issue 21).
ECE_BINS = 15


def calibration_bins(confidence: np.ndarray, correct: np.ndarray, bins: int = ECE_BINS
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(count, mean confidence, accuracy) of each of ``bins`` equal-width confidence bins."""
    confidence = np.asarray(confidence, dtype=np.float64)
    correct = np.asarray(correct, dtype=np.float64)
    index = np.minimum((confidence * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins).astype(np.float64)
    safe = np.maximum(count, 1)
    mean_confidence = np.bincount(index, confidence, minlength=bins) / safe
    accuracy = np.bincount(index, correct, minlength=bins) / safe
    return count, mean_confidence, accuracy


def expected_calibration_error(confidence: np.ndarray, correct: np.ndarray,
                               bins: int = ECE_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the bins."""
    count, mean_confidence, accuracy = calibration_bins(confidence, correct, bins)
    return float((count * np.abs(mean_confidence - accuracy)).sum() / max(count.sum(), 1))


def format_test_report(accuracy: float, per_class: list[float], confusion: np.ndarray) -> str:
    """Test accuracy, per-class accuracy and the confusion matrix as an aligned text table."""
    lines = [f"test accuracy {100 * accuracy:.2f}%", "per-class accuracy:"]
    lines.append("  " + "  ".join(f"{d}: {100 * a:5.2f}%" for d, a in enumerate(per_class)))
    width = max(5, len(str(confusion.max())) + 1)
    lines.append("confusion matrix (rows: true digit, columns: predicted):")
    lines.append("     " + "".join(f"{d:>{width}}" for d in range(len(confusion))))
    for d, row in enumerate(confusion):
        lines.append(f"  {d}: " + "".join(f"{v:>{width}}" for v in row))
    return "\n".join(lines)


def write_plots(stem: Path, history: list[dict], confusion: np.ndarray,
                mistakes: Sequence[Mistake] = (),
                reliability: tuple[np.ndarray, np.ndarray] | None = None) -> list[Path] | None:
    """Learning curves, the confusion matrix, the gallery of ``mistakes`` and, given the test
    set's (confidence, correct), the reliability diagram, as PNGs beside ``stem``; None when
    matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display in Docker or CI
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    written = [_learning_curves(plt, stem, history), _confusion_heatmap(plt, stem, confusion)]
    if mistakes:
        written.append(_mistakes_gallery(plt, stem, mistakes))
    if reliability is not None:
        written.append(_reliability_diagram(plt, stem, *reliability))
    plt.close("all")
    return written


def _learning_curves(plt, stem: Path, history: list[dict]) -> Path:
    """Loss and accuracy per epoch, training against validation."""
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], "o-", label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in history], "o-", label="validation")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.plot(epochs, [100 * r["train_accuracy"] for r in history], "o-", label="train")
    ax_acc.plot(epochs, [100 * r["val_accuracy"] for r in history], "o-", label="validation")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    return _save_figure(fig, stem.with_name(stem.name + ".curves.png"))


def _confusion_heatmap(plt, stem: Path, confusion: np.ndarray) -> Path:
    """Counts on a logarithmic colour scale: a linear one spends it all on the diagonal's
    ~1000s and leaves the mistakes (1 to 10 each) white. Empty cells stay blank."""
    from matplotlib.colors import LogNorm

    classes = len(confusion)
    fig, ax = plt.subplots(figsize=(6.5, 5.5))
    shown = np.ma.masked_equal(confusion, 0)
    image = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=1, vmax=max(confusion.max(), 2)))
    fig.colorbar(image, label="test images (log scale)")
    ax.set(xlabel="predicted", ylabel="true", title="test confusion matrix",
           xticks=range(classes), yticks=range(classes))
    for (r, c), v in np.ndenumerate(confusion):
        if v:
            bright = np.log(v) > np.log(max(confusion.max(), 2)) / 2
            ax.text(c, r, str(v), ha="center", va="center", fontsize=7,
                    color="black" if bright else "white")
    fig.tight_layout()
    return _save_figure(fig, stem.with_name(stem.name + ".confusion.png"))


def _reliability_diagram(plt, stem: Path, confidence: np.ndarray, correct: np.ndarray) -> Path:
    """Accuracy per confidence bin (bars) beside the bin's mean confidence (dots), the diagonal,
    and how many images each bin holds (a log scale: most answers are sure)."""
    count, mean_confidence, accuracy = calibration_bins(confidence, correct)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    used = count > 0
    fig, (ax, ax_count) = plt.subplots(2, 1, figsize=(5, 6), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})
    ax.bar(edges[:-1][used], accuracy[used], width=1 / ECE_BINS, align="edge",
           edgecolor="black", label="accuracy")
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    centres = (edges[:-1] + 0.5 / ECE_BINS)[used]
    ax.plot(centres, mean_confidence[used], "o", color="tab:red", markersize=4,
            label="mean confidence")
    ece = expected_calibration_error(confidence, correct)
    ax.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1),
           title=f"reliability on the test set (ECE {100 * ece:.2f}%)")
    ax.legend(loc="upper left", fontsize="small")
    ax_count.bar(edges[:-1], count, width=1 / ECE_BINS, align="edge", edgecolor="black")
    ax_count.set(xlabel="confidence", ylabel="images", yscale="log")
    fig.tight_layout()
    return _save_figure(fig, stem.with_name(stem.name + ".reliability.png"))


def _mistakes_gallery(plt, stem: Path, mistakes: Sequence[Mistake]) -> Path:
    """Each mistake three times: the image, the evidence for the wrong answer and the evidence
    for the true digit (integrated gradients; red for, blue against, one scale per mistake)."""
    columns = 2  # mistakes per row, three panels each
    rows = -(-len(mistakes) // columns)
    height = 1.75 * rows + 1.1  # inches: the panels, the title and the legend below
    fig, axes = plt.subplots(rows, 3 * columns, figsize=(9.5, height), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for k, m in enumerate(mistakes):
        image_ax, said_ax, true_ax = axes[k // columns, 3 * (k % columns):3 * (k % columns) + 3]
        image_ax.imshow(m.image, cmap="gray", vmin=0, vmax=1)
        image_ax.set_title(f"#{m.index}: a {m.label}", fontsize=8)
        scale = max(float(np.abs(m.evidence).max()), float(np.abs(m.evidence_for_label).max()),
                    1e-12)
        for ax, evidence, digit in ((said_ax, m.evidence, m.predicted),
                                    (true_ax, m.evidence_for_label, m.label)):
            heat = ax.imshow(evidence, cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.contour(m.image, levels=[0.5], colors="0.4", linewidths=0.4)
            ax.set_title(f"for {digit}" + (f" ({100 * m.confidence:.0f}%)"
                                           if digit == m.predicted else ""), fontsize=8)
    fig.suptitle("most confident mistakes on the test set: the image, why the model said it, "
                 "what it saw of the true digit", fontsize=9)
    fig.tight_layout(rect=(0, 0.8 / height, 1, 1 - 0.3 / height))
    legend = fig.add_axes((0.3, 0.45 / height, 0.4, 0.12 / height))
    bar = fig.colorbar(heat, cax=legend, orientation="horizontal", ticks=[-scale, 0, scale])
    bar.ax.set_xticklabels(["against", "0", "for"], fontsize=8)
    bar.set_label("integrated gradients (each mistake on its own scale)", fontsize=8)
    return _save_figure(fig, stem.with_name(stem.name + ".mistakes.png"))


def _save_figure(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    data = buffer.getvalue()
    atomic_write(path, lambda f: f.write(data))
    return path
