"""Names shared by the analyses, the engine and the report: the outputs and the fallback rules."""

from __future__ import annotations

from .errors import ArgumentError

# What an input that no IC lets out gets: the most confident output (the reference's) or the final one.
FALLBACKS = ("most_confident", "final")
# How an IC decides to let an input out: its max softmax, its softmax's certainty (1 - normalised
# entropy), or agreement of consecutive ICs (patience). analysis.rules simulates them, the engine runs them.
EXIT_RULES = ("max_softmax", "entropy", "patience")


def check_fallback(fallback: str) -> str:
    """``fallback`` if it is a known rule, else an :class:`ArgumentError`."""
    if fallback not in FALLBACKS:
        raise ArgumentError(f"unknown `fallback` {fallback!r}: choose one of {', '.join(FALLBACKS)}")
    return fallback


def output_names(num_outputs: int) -> list[str]:
    """``IC 1`` … ``IC k``, then ``final``: how every table and figure names the outputs."""
    return [f"IC {i + 1}" for i in range(num_outputs - 1)] + ["final"]
