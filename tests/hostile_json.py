"""Damaging JSON documents key by key, for the generative hostile-input tests (issue 27)."""

from __future__ import annotations

import math

WRONG = [None, True, -1, 0, 1.5, math.nan, math.inf, -math.inf, 10**30, "", "x" * 10, [], [1] * 5000, {}, {"a": 1}]


def key_paths(obj, prefix=(), depth=None):
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
        if isinstance(v, (dict, list)) and len(v) < 16 and (depth is None or len(prefix) + 1 < depth):
            yield from key_paths(v, (*prefix, k), depth)


def parent_of(doc, path: tuple):
    """The object holding the last key of ``path`` in ``doc``."""
    for k in path[:-1]:
        doc = doc[k]
    return doc


def damaged(doc: dict, depth=None, values=WRONG, only=None):
    """Every damaged version of ``doc``: (key path, what was done, the document): each key (down to
    ``depth`` levels; with ``only``, the paths it accepts) deleted, and each value replaced by each
    of ``values``. The document is changed in place and restored before the next one (copying a
    report of half a megabyte per case would be most of the test's time): use it at once."""
    for path in list(key_paths(doc, depth=depth)):
        if only is not None and not only(path):
            continue
        node = parent_of(doc, path)
        key, old = path[-1], node[path[-1]]
        if isinstance(node, list):
            node.pop(key)
            yield path, "deleted", doc
            node.insert(key, old)
        else:
            keys = list(node)
            del node[key]
            yield path, "deleted", doc
            node[key] = old
            for k in keys[keys.index(key) + 1 :]:  # the key back in its place (order as written)
                node[k] = node.pop(k)
        for value in values:
            node[key] = value
            yield path, repr(value)[:20], doc
        node[key] = old
