"""A strict name -> builder registry: the CLI's choices and ``shallowdeep list`` come from here."""

from __future__ import annotations

from collections.abc import Callable

from ..core.errors import ArgumentError
from .base import CNN

Builder = Callable[[int, int], CNN]
_BUILDERS: dict[str, Builder] = {}


def register(name: str) -> Callable[[Builder], Builder]:
    """Register ``builder(num_classes, image_size) -> CNN`` under ``name``; a duplicate raises."""

    def wrap(builder: Builder) -> Builder:
        if name in _BUILDERS:
            raise ValueError(f"architecture {name!r} is registered twice")
        _BUILDERS[name] = builder
        return builder

    return wrap


def list_archs() -> list[str]:
    """The registered architecture names, sorted."""
    return sorted(_BUILDERS)


def build_cnn(arch: str, num_classes: int, image_size: int) -> CNN:
    """Build the plain CNN ``arch`` for ``num_classes`` classes and square ``image_size`` inputs."""
    if arch not in _BUILDERS:
        raise ArgumentError(f"unknown architecture {arch!r}: choose one of {', '.join(list_archs())}")
    if num_classes < 1:
        raise ArgumentError(f"a classifier needs at least one class, got {num_classes}")
    return _BUILDERS[arch](num_classes, image_size)
