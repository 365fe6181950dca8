"""Module and ModuleList: parameter discovery with stable dotted names, state dicts."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import numpy as np

from autodiff import Parameter


class StateDictError(ValueError):
    """A state dict does not fit a module; the message lists every problem at once."""


def _named_parameters(items, prefix: str) -> Iterator[tuple[str, Parameter]]:
    for name, obj in items:
        if isinstance(obj, Parameter):
            yield prefix + name, obj
        elif isinstance(obj, (Module, ModuleList)):
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

    def load_state_dict(self, state: Mapping[str, np.ndarray], strict: bool = True) -> None:
        """Copy arrays into the parameters in place, reporting every problem in one error.

        With ``strict`` missing and unexpected names are errors; a shape or dtype mismatch
        always is. Nothing is copied unless everything fits.
        """
        own = dict(self.named_parameters())
        problems = []
        if strict:
            problems += [f'missing "{name}"' for name in own if name not in state]
            problems += [f'unexpected "{name}"' for name in state if name not in own]
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


class ModuleList(list):
    """A list of modules (or parameters) whose parameters are discovered, named by index."""

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        return _named_parameters(((str(i), m) for i, m in enumerate(self)), prefix)

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]
