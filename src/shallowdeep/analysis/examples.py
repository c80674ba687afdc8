"""Which inputs a figure or an explanation shows: spread over the classes, the same every time.

The first ``n`` positions of a selection show whatever class the split stores first (the CIFAR test
split: airplanes and automobiles only); taking one input of each class in turn, each class's inputs
in a seeded order, shows the selection's range and is reproducible.
"""

from __future__ import annotations

import numpy as np

EXAMPLES_SEED = 0


def spread_over_classes(mask: np.ndarray, labels: np.ndarray, n: int, seed: int = EXAMPLES_SEED) -> list[int]:
    """Up to ``n`` positions where ``mask`` holds, one class after another (classes in order of
    their labels, each class's positions in an order drawn from ``seed``), returned in input order."""
    positions = np.flatnonzero(mask)
    if n <= 0 or not len(positions):
        return []
    order = np.random.default_rng(seed).permutation(len(positions))
    by_class: dict[int, list[int]] = {}
    for p in positions[order]:
        by_class.setdefault(int(labels[p]), []).append(int(p))
    queues = [by_class[c] for c in sorted(by_class)]
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop(0))
    return sorted(chosen)
