"""Damaging JSON documents key by key, for the generative hostile-input tests (issue 27)."""

from __future__ import annotations

import copy
import math

WRONG = [None, True, -1, 0, 1.5, math.nan, math.inf, -math.inf, 10**30, "", "x" * 10, [], [1] * 5000, {}, {"a": 1}]


def key_paths(obj, prefix=()):
    """Every key path of a JSON object; of a list, its first and last entries (the ones between
    follow the same schema: one per stage, per epoch, per class)."""
    if isinstance(obj, dict):
        items = list(obj.items())
    elif isinstance(obj, list):
        items = [(i, obj[i]) for i in sorted({0, len(obj) - 1})] if obj else []
    else:
        items = []
    for k, v in items:
        yield (*prefix, k)
        if isinstance(v, (dict, list)) and len(v) < 16:
            yield from key_paths(v, (*prefix, k))


def edited(doc: dict, path: tuple, value, delete: bool = False) -> dict:
    """A copy of ``doc`` with the key at ``path`` deleted or set to ``value``."""
    m = copy.deepcopy(doc)
    node = m
    for k in path[:-1]:
        node = node[k]
    if delete:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return m


def damaged(doc: dict):
    """Every damaged copy of ``doc``: (key path, what was done, the copy): each key deleted, and each
    value replaced by each of :data:`WRONG`."""
    for path in key_paths(doc):
        yield path, "deleted", edited(doc, path, None, delete=True)
        for value in WRONG:
            yield path, repr(value)[:20], edited(doc, path, value)
