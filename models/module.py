"""Module and ModuleList: parameter discovery with stable dotted names, state dicts."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import NamedTuple

import numpy as np

from autodiff import Parameter


class StateDictError(ValueError):
    """A state dict does not fit a module; the message lists every problem at once."""


class IncompatibleKeys(NamedTuple):
    """What ``load_state_dict`` skipped, as PyTorch returns it: names missing from the state
    and names in the state that the module does not have."""

    missing_keys: list[str]
    unexpected_keys: list[str]


def _named_parameters(items, prefix: str) -> Iterator[tuple[str, Parameter]]:
    for name, obj in items:
        if isinstance(obj, Parameter):
            yield prefix + name, obj
        elif isinstance(obj, Module):
            yield from obj.named_parameters(prefix + name + ".")


class Module:
    """Base class of networks: parameters are found among attributes, in insertion order."""

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(dotted name, parameter) pairs: ``layers.0.W``; the order every consumer uses."""
        return _named_parameters(vars(self).items(), prefix)

    def parameters(self) -> list[Parameter]:
        """All parameters of this module and its sub-modules (the lab's API)."""
        return [p for _, p in self.named_parameters()]

    def zero_grad(self) -> None:
        """Forget every parameter's gradient."""
        for p in self.parameters():
            p.grad = None

    def forward(self, x):
        raise NotImplementedError(f"{type(self).__name__} must define forward(x)")

    def __call__(self, x):
        return self.forward(x)

    def num_parameters(self) -> int:
        """Total number of scalar parameters."""
        return sum(p.value.size for p in self.parameters())

    def state_dict(self) -> dict[str, np.ndarray]:
        """Parameter arrays by dotted name (references, not copies)."""
        return {name: p.value for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, np.ndarray],
                        strict: bool = True) -> IncompatibleKeys:
        """Copy arrays into the parameters in place, reporting every problem in one error.

        With ``strict`` missing and unexpected names are errors; without, they are skipped and
        returned. A shape or dtype mismatch always is an error. Nothing is copied unless
        everything fits.
        """
        own = dict(self.named_parameters())
        keys = IncompatibleKeys([name for name in own if name not in state],
                                [name for name in state if name not in own])
        problems = []
        if strict:
            problems += [f'missing "{name}"' for name in keys.missing_keys]
            problems += [f'unexpected "{name}"' for name in keys.unexpected_keys]
        for name, p in own.items():
            if name not in state:
                continue
            array = np.asarray(state[name])
            if array.shape != p.value.shape:
                problems.append(
                    f"size mismatch for {name}: file {array.shape}, model {p.value.shape}"
                )
            elif array.dtype.kind != "f":
                problems.append(f"dtype mismatch for {name}: {array.dtype}, expected float")
        if problems:
            raise StateDictError(
                f"Error(s) loading state_dict into {type(self).__name__}: " + "; ".join(problems)
            )
        for name, p in own.items():
            if name in state:
                np.copyto(p.value, state[name], casting="same_kind")
        return keys


class ModuleList(Module):
    """A list of modules (or parameters) whose parameters are discovered, named by index.

    Indexing, slicing (a ModuleList again), iteration, ``len`` and ``append`` work as on a list.
    """

    def __init__(self, items: Iterable[Module | Parameter] = ()):
        self._items: list[Module | Parameter] = list(items)

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        return _named_parameters(((str(i), m) for i, m in enumerate(self._items)), prefix)

    def append(self, item: Module | Parameter) -> ModuleList:
        """Add ``item`` at the end (named by its index)."""
        self._items.append(item)
        return self

    def extend(self, items: Iterable[Module | Parameter]) -> ModuleList:
        """Add every item of ``items`` at the end."""
        self._items.extend(items)
        return self

    def __getitem__(self, index):
        if isinstance(index, slice):
            return ModuleList(self._items[index])
        return self._items[index]

    def __setitem__(self, index: int, item: Module | Parameter) -> None:
        self._items[index] = item

    def __iter__(self) -> Iterator[Module | Parameter]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return "ModuleList([" + ", ".join(repr(m) for m in self._items) + "])"
