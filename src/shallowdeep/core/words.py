"""Counts in sentences: "1 epoch", "2 epochs", "0.5 points"."""

from __future__ import annotations


def counted(n: float, noun: str, plural: str | None = None) -> str:
    """``n`` (a float in its shortest form) and ``noun``, the noun plural (``plural``, else
    ``noun + "s"``) unless ``n`` is 1."""
    text = f"{n:g}" if isinstance(n, float) else str(n)
    return f"{text} {noun if n == 1 else plural or noun + 's'}"
