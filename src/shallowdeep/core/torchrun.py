"""The place torchrun gives a process, read from its environment and checked (no torch imported).

``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` that are not whole numbers in range, or a rank outside
the world, would crash in torch or wait forever for ranks that never come: they are refused here
with one line.
"""

from __future__ import annotations

import os

from .errors import UserError

MAX_WORLD = 1 << 16


def _env_int(name: str, default: int, least: int, most: int) -> int:
    """A whole number torchrun put in the environment, checked (a wrong one would hang or crash)."""
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not least <= value <= most:
        raise UserError(
            f"{name}={text!r} is not a whole number in {least}..{most}: start the processes with torchrun "
            f"(it sets {name}), or unset it for one process"
        )
    return value


def torchrun_place() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's variables; (0, 1, 0) when none is set."""
    world = _env_int("WORLD_SIZE", 1, 1, MAX_WORLD)
    rank = _env_int("RANK", 0, 0, MAX_WORLD)
    if rank >= world:
        raise UserError(
            f"RANK={rank} with WORLD_SIZE={world}: ranks run from 0 to {world - 1}; start the processes "
            "with torchrun, or unset RANK and WORLD_SIZE for one process"
        )
    return rank, world, _env_int("LOCAL_RANK", 0, 0, MAX_WORLD)
