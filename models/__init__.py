"""Modules, initializers, the networks (the lab's and the CNN), and model files (.npz)."""

from models.archive import (
    ModelFileError,
    atomic_write,
    open_regular_file,
    read_checkpoint,
    write_checkpoint,
)
from models.convnet import ConvNetwork
from models.init import glorot_init, kaiming_init, zero_init
from models.module import IncompatibleKeys, Module, ModuleList
from models.networks import DeepNetwork, DenseStack, LinearNetwork
from models.preprocessing import preprocessing_config, to_model_input
from models.registry import NETWORKS, build
from models.serialization import load, save
from models.version import digitgrad_version

__all__ = [
    "ConvNetwork",
    "DeepNetwork",
    "DenseStack",
    "IncompatibleKeys",
    "LinearNetwork",
    "ModelFileError",
    "Module",
    "ModuleList",
    "NETWORKS",
    "atomic_write",
    "build",
    "digitgrad_version",
    "glorot_init",
    "kaiming_init",
    "load",
    "open_regular_file",
    "preprocessing_config",
    "read_checkpoint",
    "save",
    "to_model_input",
    "write_checkpoint",
    "zero_init",
]
