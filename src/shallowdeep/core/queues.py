"""Queues of batches: the inputs waiting before one stage, taken a batch at a time.

The torch engine's throughput path and the HTTP service's batcher both keep, before each stage, a
list of batches (the runtime's own row type: ``len()`` and ``rows(start, stop)`` views) and take up to
``n`` inputs from its front; :func:`take` is that one rule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeVar


class Batch(Protocol):
    def __len__(self) -> int: ...

    def rows(self, start: int, stop: int | None = None) -> Batch: ...


B = TypeVar("B", bound=Batch)


def take(queue: list[B], n: int, concat: Callable[[list[B]], B]) -> B:
    """The first ``n`` inputs of ``queue`` (or all it holds) as one batch, ``concat`` joining several;
    the rest stay queued. A batch split at the cut goes as its head, its tail stays first in line
    (views, no copies)."""
    parts: list[B] = []
    got = 0
    while queue and got < n:
        r = queue.pop(0)
        if got + len(r) > n:
            cut = n - got
            queue.insert(0, r.rows(cut))  # type: ignore[arg-type]
            r = r.rows(0, cut)  # type: ignore[assignment]
        parts.append(r)
        got += len(r)
    return parts[0] if len(parts) == 1 else concat(parts)
