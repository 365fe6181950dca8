"""The end-of-epoch work ``fit`` delegates: early stopping, checkpoints, the metrics log."""

from __future__ import annotations

from pathlib import Path

from trainer.checkpoints import save_checkpoint
from trainer.loop import Callback, Session
from trainer.report import Progress, write_metrics_csv


class EarlyStopping(Callback):
    """Stop after ``patience`` epochs without a better validation accuracy (0: never).

    The count lives in the training state, so a resumed run keeps counting where it stopped.
    """

    def __init__(self, patience: int, progress: Progress | None = None):
        self.patience = patience
        self.progress = progress or Progress(quiet=True)

    def on_epoch_end(self, session: Session, row: dict, improved: bool) -> None:
        state = session.state
        if improved:
            state.epochs_without_improvement = 0
            return
        state.epochs_without_improvement += 1
        if self.patience and state.epochs_without_improvement >= self.patience:
            state.stopped_early = True
            self.progress.message(
                f"early stopping: no better validation accuracy for {self.patience} epochs "
                f"(best {100 * state.best_val_accuracy:.2f}% at epoch {state.best_epoch})")


class CheckpointWriter(Callback):
    """Write the checkpoint after every epoch and when interrupted (``extra`` goes in its meta)."""

    def __init__(self, path: Path, extra: dict | None = None):
        self.path, self.extra = path, extra

    def on_epoch_end(self, session: Session, row: dict, improved: bool) -> None:
        save_checkpoint(self.path, session, self.extra)

    def on_interrupt(self, session: Session) -> None:
        save_checkpoint(self.path, session, self.extra)


class MetricsLog(Callback):
    """Rewrite the per-epoch metrics CSV after every epoch."""

    def __init__(self, path: Path):
        self.path = path

    def on_epoch_end(self, session: Session, row: dict, improved: bool) -> None:
        write_metrics_csv(self.path, session.state.history)
