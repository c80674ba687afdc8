"""Checking a dataclass's fields against their annotations where a request enters (Python or a file).

A value of the wrong type (``epochs="ten"``, ``milestones=5``, ``backdoor="yes"``) is refused with
one :class:`~shallowdeep.core.errors.ArgumentError` naming the field, before anything uses it;
lists given for tuple fields become tuples. Ranges are checked by the types that use the values.
"""

from __future__ import annotations

import functools
import types
import typing
from dataclasses import fields
from typing import Any

from .errors import ArgumentError


def _describe(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args if a is not type(None))
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict or hint is dict:
        return "a mapping"
    names = {type(None): "none", bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, getattr(hint, "__name__", str(hint)))


def _fits(value: Any, hint: Any) -> tuple[bool, Any]:
    """Whether ``value`` fits ``hint``, and the value as the field keeps it."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            ok, v = _fits(value, a)
            if ok:
                return True, v
        return False, value
    if hint is type(None):
        return value is None, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value  # ranges (finite, positive) are the recipe's to check
    if hint is str:
        return isinstance(value, str), value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False, value
        kept = [_fits(v, args[0]) for v in value]
        return all(ok for ok, _ in kept), origin(v for _, v in kept)
    if origin is dict or hint is dict:
        return isinstance(value, dict), value
    return isinstance(value, hint) if isinstance(hint, type) else True, value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """The class's field annotations as types; a JSON object (a recursive alias that does not
    evaluate at run time) stands as ``dict``."""
    return typing.get_type_hints(cls, localns={"JSONObject": dict})


def check_fields(obj: Any, skip: tuple[str, ...] = ()) -> None:
    """Refuse any field of the dataclass ``obj`` whose value does not fit its annotation (lists
    become tuples where the field is a tuple); ``skip`` names fields checked elsewhere."""
    hints = _hints(type(obj))
    for f in fields(obj):
        if f.name in skip:
            continue
        value = getattr(obj, f.name)
        ok, kept = _fits(value, hints[f.name])
        if not ok:
            shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
            raise ArgumentError(f"`{f.name}` must be {_describe(hints[f.name])}, got {shown}")
        if kept is not value:
            object.__setattr__(obj, f.name, kept)
