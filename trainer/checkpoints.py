"""Checkpoints: everything needed to continue a run exactly, in one atomically written file.

A checkpoint holds the current and the best parameters, the optimizer's velocities, the config,
the training state and the RNG position (seed, epoch, batch; see ``trainer.loop``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from models import ModelFileError, read_checkpoint, write_checkpoint
from trainer.config import TrainConfig
from trainer.loop import Session, TrainState

#: What a checkpoint written before the config named these fields (format version 1) meant.
_VERSION_1_CONFIG = {"dataset": "mnist", "arch": "mlp", "elastic": False, "blur": False,
                     "lowres": False}
#: What a checkpoint written before the config named flag_ones meant: none were added.
_BEFORE_FLAG_ONES = {"flag_ones": False}
#: What a checkpoint written before the generated images (trainer.synthetic) meant: none, a
#: ten-output model; and before the pictures of clothes among the not-digits: none.
_BEFORE_SYNTHETIC = {"not_digits": 0, "pen_digits": 0, "clothes": 0, "typeset_digits": 0,
                     "typed_letters": 0, "typed_digits": 0}
#: Config fields renamed since: old name -> the name TrainConfig knows (the CNN's dense widths
#: were fc_dims, hidden_dims as in ConvNetwork now).
_RENAMED = {"fc_dims": "hidden_dims"}


def save_checkpoint(path: Path, session: Session, extra: dict | None = None) -> None:
    """Parameters, best parameters, velocities, config and state, written atomically."""
    arrays = {f"model/{k}": v for k, v in session.model.state_dict().items()}
    arrays.update({f"best/{k}": v for k, v in session.best.items()})
    optim = session.optimizer.state_dict()
    arrays.update({f"velocity/{i}": v for i, v in enumerate(optim.pop("velocities"))})
    state, config = session.state, session.config
    meta = {
        "architecture": session.model.config(),
        "config": config.to_dict(),
        "state": asdict(state),
        "optimizer": optim,
        "rng": {"seed": config.seed, "epoch": state.epoch + 1, "batch": state.batch,
                "scheme": "default_rng([seed, epoch]) shuffles, default_rng([seed, epoch, batch]) "
                          "augments"},
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    write_checkpoint(path, arrays, meta)


@dataclass
class Checkpoint:
    """A loaded checkpoint, ready to restore."""

    config: TrainConfig
    state: TrainState
    meta: dict
    arrays: dict[str, np.ndarray]

    def restore(self, session: Session) -> None:
        """Load parameters, velocities, state and the best parameters so far into ``session``."""
        groups: dict[str, dict[str, np.ndarray]] = {"model": {}, "best": {}, "velocity": {}}
        for name, array in self.arrays.items():
            group, _, key = name.partition("/")
            if group in groups:
                groups[group][key] = array
        session.model.load_state_dict(groups["model"])
        velocities = [groups["velocity"][str(i)] for i in range(len(groups["velocity"]))]
        session.optimizer.load_state_dict({**self.meta["optimizer"], "velocities": velocities})
        session.best = {k: v.copy() for k, v in groups["best"].items()}
        session.state = self.state


def load_checkpoint(path: Path) -> Checkpoint:
    """Read a checkpoint written by ``save_checkpoint``; ModelFileError if it is not one."""
    arrays, meta = read_checkpoint(path)
    try:
        values = dict(meta["config"])
        if meta["format_version"] == 1:
            values = {**_VERSION_1_CONFIG, **values}
        values = {**_BEFORE_FLAG_ONES, **_BEFORE_SYNTHETIC, **values}
        values = {_RENAMED.get(name, name): value for name, value in values.items()}
        config = TrainConfig.from_dict(values)
        state = TrainState(**meta["state"])
    except (KeyError, TypeError) as exc:
        raise ModelFileError(path, f"incomplete checkpoint ({exc})") from exc
    return Checkpoint(config, state, meta, arrays)
