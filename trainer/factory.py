"""The model, optimizer and schedule a ``TrainConfig`` describes."""

from __future__ import annotations

import numpy as np

from autodiff import SGDWithMomentum
from models import ConvNetwork, DeepNetwork, Module
from trainer.config import TrainConfig
from trainer.schedule import LRSchedule

CLASSES = 10
IMAGE_SIZE = 28


def build_model(config: TrainConfig) -> Module:
    """The network the config describes, initialised from ``default_rng(seed)``.

    Raises ValueError (saying which setting) when the CNN's settings do not fit together.
    """
    rng = np.random.default_rng(config.seed)
    # the eleventh output scores "not a digit" (models.decision)
    outputs = CLASSES + 1 if config.not_digits else CLASSES
    if config.arch == "mlp":
        return DeepNetwork(IMAGE_SIZE * IMAGE_SIZE, outputs, config.hidden_dim, config.layers,
                           tanh=config.activation == "tanh", rng=rng)
    return ConvNetwork(outputs, 1, IMAGE_SIZE, channels=config.channels,
                       kernel_sizes=config.kernel_sizes, paddings=config.paddings,
                       pool=2, hidden_dims=config.hidden_dims, rng=rng)


def build_optimizer(model: Module, config: TrainConfig) -> SGDWithMomentum:
    """Momentum SGD over the model's parameters."""
    return SGDWithMomentum(model.parameters(), lr=config.lr, momentum=config.momentum,
                           weight_decay=config.weight_decay, nesterov=config.nesterov)


def build_schedule(config: TrainConfig, steps_per_epoch: int) -> LRSchedule:
    """The learning rate as a function of the global step."""
    return LRSchedule(config.schedule, config.lr, config.epochs * steps_per_epoch, steps_per_epoch,
                      warmup_steps=round(config.warmup_epochs * steps_per_epoch),
                      step_epochs=config.lr_step_epochs, gamma=config.lr_gamma)
