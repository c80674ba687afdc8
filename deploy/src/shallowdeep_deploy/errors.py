"""Typed errors of the library.

Messages speak of the library: arguments, files, shapes. A message names an argument in backticks
(`` `epochs` ``); ``str(error)`` shows the bare name, and the command line swaps in the flag that
sets it (``--epochs``), so no module below the command line knows a flag.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_ARG = re.compile(r"`([A-Za-z_][A-Za-z0-9_]*)`")


def render_names(text: str, names: Mapping[str, str] | None = None) -> str:
    """``text`` with each `` `argument` `` written as ``names[argument]`` (a flag, on the command
    line) or its bare name: the library names arguments, only the command line knows flags."""
    names = names or {}
    return _ARG.sub(lambda m: names.get(m.group(1), m.group(1)), text)


class UserError(Exception):
    """Bad input from the user: the message names the problem and what to do about it."""

    def render(self, names: Mapping[str, str] | None = None) -> str:
        """The message with each `` `argument` `` written as ``names[argument]`` (or its bare name)."""
        return render_names(str(self.args[0]) if self.args else "", names)

    def __str__(self) -> str:
        return self.render()


class ArgumentError(UserError):
    """An argument's value is out of range, malformed or contradicts another."""


class DataError(UserError):
    """A data set or image is missing, unreadable or of the wrong shape."""


class RunFolderError(UserError):
    """A run folder is missing, damaged, unfinished or of another kind."""


class NotCalibratedError(RunFolderError):
    """A run has no early-exit threshold calibrated for its current weights."""


class MissingExtraError(UserError):
    """An optional dependency is not installed; ``extra`` names the pip extra that brings it."""

    def __init__(self, message: str, extra: str) -> None:
        super().__init__(message)
        self.extra = extra
