"""Modules, initializers, the lab's networks, and saving/loading parameters as .npz."""

from models.init import glorot_init, kaiming_init, zero_init
from models.module import Module, ModuleList
from models.networks import DeepNetwork, LinearNetwork, build
from models.preprocessing import preprocessing_config, to_model_input
from models.serialization import ModelFileError, load, save

__all__ = [
    "DeepNetwork",
    "LinearNetwork",
    "ModelFileError",
    "Module",
    "ModuleList",
    "build",
    "glorot_init",
    "kaiming_init",
    "load",
    "preprocessing_config",
    "save",
    "to_model_input",
    "zero_init",
]
