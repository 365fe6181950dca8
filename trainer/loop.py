"""fit / train_epoch / evaluate, end-of-epoch callbacks, divergence and Ctrl-C handling.

Randomness: the model is initialised from ``default_rng(seed)``; epoch ``e`` is shuffled by
``default_rng([seed, e])`` and batch ``b`` of it augmented by ``default_rng([seed, e, b])``.
So the RNG state at any point is (seed, epoch, batch), which a checkpoint holds, and a run
resumed from a checkpoint (even one written mid-epoch by Ctrl-C) repeats exactly the
computations of an uninterrupted run: the same parameter arrays, bit for bit.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from autodiff import ComputationGraphNode, SGDWithMomentum, cross_entropy, no_grad
from models import Module, to_model_input
from trainer.augment import AugmentConfig, augment_batch
from trainer.config import TrainConfig
from trainer.data import Split, batch_slices
from trainer.factory import build_schedule
from trainer.report import Progress
from trainer.schedule import LRSchedule

EVAL_BATCH = 500  # evaluation chunks: big enough for BLAS, small enough for the conv patches


class DivergenceError(Exception):
    """The loss became NaN or infinite; the message says where and suggests a lower --lr."""

    def __init__(self, epoch: int, batch: int, lr: float, what: str):
        self.epoch, self.batch, self.lr = epoch, batch, lr
        where = f"epoch {epoch}, batch {batch}" if batch else f"epoch {epoch}"
        super().__init__(
            f"training diverged: {what} at {where} (lr {lr:.4g}); lower the learning rate "
            f"(e.g. --lr {lr / 10:.3g}) or add --warmup-epochs 1"
        )


class TrainingInterruptedError(Exception):
    """Training stopped on request (Ctrl-C), after the callbacks' ``on_interrupt``."""

    def __init__(self, epoch: int, batch: int):
        self.epoch, self.batch = epoch, batch
        super().__init__(f"interrupted in epoch {epoch} after batch {batch}")


class StopFlag:
    """Set by the first Ctrl-C; the loop checks it between batches (never mid-update)."""

    def __init__(self) -> None:
        self.requested = False

    def request(self) -> None:
        self.requested = True

    @contextmanager
    def on_sigint(self, notify: Callable[[str], None] | None = None) -> Iterator[StopFlag]:
        """Within the block, a first Ctrl-C requests a stop; a second one interrupts at once."""
        if threading.current_thread() is not threading.main_thread():
            yield self  # signal handlers can only be installed from the main thread
            return
        previous = signal.getsignal(signal.SIGINT)

        def handler(signum, frame):
            self.request()
            signal.signal(signal.SIGINT, signal.default_int_handler)
            if notify:
                notify("\nstopping after this batch to write a checkpoint "
                       "(Ctrl-C again to quit without one)")

        signal.signal(signal.SIGINT, handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    batch: int = 0  # batches completed in epoch ``epoch + 1`` (non-zero only after Ctrl-C)
    step: int = 0  # optimizer steps taken in total
    best_val_accuracy: float = -1.0
    best_epoch: int = 0
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)
    partial: dict = field(default_factory=dict)  # running sums of an interrupted epoch


@dataclass
class Prepared:
    """The arrays the loop consumes, prepared once (float32, normalised unless augmenting)."""

    train_x: np.ndarray  # (N, 784) model inputs, or (N, 28, 28) images when augmenting
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    preprocessing: dict
    augment: AugmentConfig | None = None


def prepare(train: Split, val: Split, preprocessing: dict,
            augment: AugmentConfig | None) -> Prepared:
    """Normalise once up front so the per-batch work is a slice (augmentation needs raw images)."""
    train_x = train.images if augment else to_model_input(train.images, preprocessing)
    return Prepared(train_x, train.labels, to_model_input(val.images, preprocessing), val.labels,
                    preprocessing, augment)


@dataclass
class Session:
    """What training changes: the model, its optimizer, the state, the best parameters so far."""

    model: Module
    optimizer: SGDWithMomentum
    config: TrainConfig
    state: TrainState = field(default_factory=TrainState)
    best: dict[str, np.ndarray] = field(default_factory=dict)


class Callback:
    """Hooks ``fit`` calls, in list order (Keras-style); override the ones you need."""

    def on_epoch_end(self, session: Session, row: dict, improved: bool) -> None:
        """After epoch ``session.state.epoch`` was validated; ``row`` is its metrics."""

    def on_interrupt(self, session: Session) -> None:
        """A stop was requested mid-epoch; ``session.state`` says where training stands."""


def evaluate(model, x: np.ndarray, y: np.ndarray) -> tuple[float, float, np.ndarray]:
    """(mean cross-entropy, accuracy, predicted labels) without recording a graph."""
    losses, predictions = 0.0, np.empty(len(y), dtype=np.int64)
    with no_grad():
        for s in batch_slices(len(y), EVAL_BATCH):
            logits = model(ComputationGraphNode(x[s]))
            losses += float(cross_entropy()(logits, y[s]).value) * (s.stop - s.start)
            predictions[s] = logits.value.argmax(axis=1)
    n = max(len(y), 1)
    return losses / n, float(np.mean(predictions == y)) if len(y) else 0.0, predictions


def train_epoch(session: Session, data: Prepared, schedule: LRSchedule, progress: Progress,
                stop: StopFlag) -> dict:
    """Train epoch ``state.epoch + 1`` from batch ``state.batch``; returns its running sums.

    Raises DivergenceError on a non-finite loss (before the update that would spread it), and
    returns early with ``stop.requested`` set when a stop was asked for.
    """
    model, optimizer, config, state = (session.model, session.optimizer, session.config,
                                       session.state)
    epoch = state.epoch + 1
    rng = np.random.default_rng([config.seed, epoch])
    order = rng.permutation(len(data.train_y))
    # gather each batch's rows when it is needed: a shuffled copy of the whole set (157 MB)
    # would cost more in page faults each epoch than the small gathers do
    ys = data.train_y[order]
    slices = batch_slices(len(ys), config.batch_size)
    sums = state.partial or {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
    progress.epoch_start(epoch, config.epochs, len(slices), state.batch)
    start = time.perf_counter()
    todo = range(state.batch, len(slices))
    if data.augment is not None:
        def make_input(b: int) -> np.ndarray:
            images = augment_batch(data.train_x[order[slices[b]]],
                                   np.random.default_rng([config.seed, epoch, b]), data.augment)
            return to_model_input(images, data.preprocessing)

        inputs = prefetch(make_input, todo)
    else:
        inputs = (data.train_x[order[slices[b]]] for b in todo)
    try:
        for b, x in zip(todo, inputs):
            y = ys[slices[b]]
            optimizer.lr = schedule(state.step)
            optimizer.zero_grad()
            try:
                # an overflow anywhere in the step is divergence: stop before NaNs spread
                with np.errstate(over="raise", invalid="raise", divide="raise"):
                    logits = model(ComputationGraphNode(x))
                    loss = cross_entropy()(logits, y)
                    value = float(loss.value)
                    if not math.isfinite(value):
                        raise FloatingPointError(f"loss is {value}")
                    loss.backward()
                    optimizer.step()
            except FloatingPointError as exc:
                what = str(exc) if str(exc).startswith("loss") else f"numbers overflowed ({exc})"
                raise DivergenceError(epoch, b + 1, optimizer.lr, what) from exc
            state.step += 1
            state.batch = b + 1
            sums["loss"] += value * len(y)
            sums["correct"] += int(np.count_nonzero(logits.value.argmax(axis=1) == y))
            sums["seen"] += len(y)
            progress.batch_end(value, len(y))
            if stop.requested and state.batch < len(slices):
                break
    finally:
        inputs.close()  # stops the prefetching thread on a break or an error
        sums["seconds"] += time.perf_counter() - start
        progress.close()
    return sums


def prefetch(make: Callable[[int], np.ndarray], indices: range) -> Iterator[np.ndarray]:
    """``make(i)`` for each index in order, computing the next one in a worker thread meanwhile.

    numpy releases the GIL in its loops, so with one BLAS thread the augmentation of batch b+1
    runs on another core while batch b trains. Each batch has its own generator, so the results
    are the same as those of a plain loop.
    """
    if not indices:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="digitgrad-augment") as pool:
        future = pool.submit(make, indices[0])
        for following in indices[1:]:
            current, future = future.result(), pool.submit(make, following)
            yield current
        yield future.result()


def fit(session: Session, data: Prepared, callbacks: Sequence[Callback] = (),
        progress: Progress | None = None, stop: StopFlag | None = None) -> Session:
    """Train until ``config.epochs`` or until a callback sets ``state.stopped_early``.

    After every epoch: validation, the best parameters kept in ``session.best``, a progress
    line, then each callback's ``on_epoch_end``. On a stop request mid-epoch the callbacks'
    ``on_interrupt`` run and ``TrainingInterruptedError`` is raised. A session restored from a
    checkpoint continues where it stopped.
    """
    progress = progress or Progress(quiet=True)
    stop = stop or StopFlag()
    model, config, state = session.model, session.config, session.state
    if not session.best:
        session.best = {k: v.copy() for k, v in model.state_dict().items()}
    batches = len(batch_slices(len(data.train_y), config.batch_size))
    schedule = build_schedule(config, batches)
    while state.epoch < config.epochs and not state.stopped_early:
        sums = train_epoch(session, data, schedule, progress, stop)
        if stop.requested and state.batch < batches:
            state.partial = sums
            for callback in callbacks:
                callback.on_interrupt(session)
            raise TrainingInterruptedError(state.epoch + 1, state.batch)
        state.epoch, state.batch, state.partial = state.epoch + 1, 0, {}
        try:
            with np.errstate(over="raise", invalid="raise", divide="raise"):
                val_loss, val_accuracy, _ = evaluate(model, data.val_x, data.val_y)
        except FloatingPointError as exc:
            raise DivergenceError(state.epoch, 0, session.optimizer.lr,
                                  f"{exc} on the validation set") from exc
        if not math.isfinite(val_loss):
            raise DivergenceError(state.epoch, 0, session.optimizer.lr,
                                  f"validation loss is {val_loss}")
        state.train_seconds += sums["seconds"]
        row = {
            "epoch": state.epoch,
            "train_loss": sums["loss"] / max(sums["seen"], 1),
            "train_accuracy": sums["correct"] / max(sums["seen"], 1),
            "val_loss": val_loss,
            "val_accuracy": val_accuracy,
            "lr": session.optimizer.lr,
            "seconds": sums["seconds"],
            "images_per_second": sums["seen"] / max(sums["seconds"], 1e-9),
        }
        state.history.append(row)
        improved = val_accuracy > state.best_val_accuracy
        if improved:
            state.best_val_accuracy, state.best_epoch = val_accuracy, state.epoch
            session.best = {k: v.copy() for k, v in model.state_dict().items()}
        progress.epoch_end(row, config.epochs, improved)
        for callback in callbacks:
            callback.on_epoch_end(session, row, improved)
        finished = state.epoch >= config.epochs or state.stopped_early
        if stop.requested and not finished:  # Ctrl-C in an epoch's last batch: its checkpoint
            raise TrainingInterruptedError(state.epoch, 0)
    return session
