"""How every table and figure names an SDN's outputs."""

from __future__ import annotations


def output_names(num_outputs: int) -> list[str]:
    """``IC 1`` … ``IC k``, then ``final``: how every table and figure names the outputs."""
    return [f"IC {i + 1}" for i in range(num_outputs - 1)] + ["final"]
