"""A method's accuracy for compute, read the way Zero Time Waste's tables read: the test accuracy at
25, 50, 75 and 100 % of the CNN's cost, each threshold chosen on the validation sweep, and the area
under the test accuracy-cost curve."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..core.io import JSONObject
from .early_exit import Sweep, most_accurate_within

COST_FRACTIONS = (0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class CostPoint:
    """At a cost budget (relative to the CNN's): the validation sweep's most accurate threshold within
    it and that threshold's test accuracy and cost; ``None`` where no threshold fits the budget."""

    budget: float
    threshold: float | None
    test_accuracy: float | None
    test_cost: float | None

    def to_json(self) -> JSONObject:
        return asdict(self)


@dataclass(frozen=True)
class Tradeoff:
    """One method's accuracy at the fixed costs and its area under the test accuracy-cost curve."""

    points: tuple[CostPoint, ...]
    auc: float

    def to_json(self) -> JSONObject:
        return {"points": [p.to_json() for p in self.points], "auc": self.auc}


def curve_area(curve: Sweep) -> float:
    """Area under the best test accuracy reachable at each cost, over costs 0 to 1 (the CNN's):
    0 below the cheapest threshold, the running best accuracy (the Pareto front) above it; in [0, 1],
    comparable across methods of one backbone."""
    order = np.argsort(curve.relative_cost, kind="stable")
    cost, acc = curve.relative_cost[order], np.maximum.accumulate(curve.accuracy[order])
    inside = cost <= 1.0
    cost, acc = cost[inside], acc[inside]
    if not len(cost):
        return 0.0
    edges = np.r_[cost, 1.0]
    return float((acc * np.diff(edges)).sum())


def tradeoff(val_curve: Sweep, test_curve: Sweep, fractions: tuple[float, ...] = COST_FRACTIONS) -> Tradeoff:
    """The accuracy at each cost fraction (thresholds chosen on ``val_curve``, reported on
    ``test_curve``: the same thresholds swept on the two splits) and the test curve's area."""
    points = []
    for b in fractions:
        i = most_accurate_within(val_curve, b)  # calibrate's budget rule, on validation
        if i is None:
            points.append(CostPoint(b, None, None, None))
            continue
        points.append(
            CostPoint(
                b, float(val_curve.thresholds[i]), float(test_curve.accuracy[i]), float(test_curve.relative_cost[i])
            )
        )
    return Tradeoff(tuple(points), curve_area(test_curve))
