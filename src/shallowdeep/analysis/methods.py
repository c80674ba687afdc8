"""Several runs' methods side by side (``shallowdeep compare``): every run's exit rules on the same
test inputs, each read at fixed costs and by its curve's area (:mod:`.tradeoff`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import ArgumentError
from ..core.exit_rule import ExitRule
from ..core.io import JSONObject
from .early_exit import Sweep
from .record import ExitRecord
from .rules import compare_rules
from .tradeoff import Tradeoff


@dataclass(frozen=True)
class RunRecords:
    """One run to compare: its name, how it was trained (``mode``, e.g. ``mixed``, ``ic-only +distill``)
    and its validation and test records."""

    name: str
    mode: str
    val: ExitRecord
    test: ExitRecord


@dataclass(frozen=True)
class MethodRow:
    """One run under one exit rule: its test curve and its accuracy at fixed costs."""

    run: str
    mode: str
    rule: str
    final_accuracy: float  # the run's final output on the test split
    tradeoff: Tradeoff
    curve: Sweep

    def to_json(self) -> JSONObject:
        return {
            "run": self.run,
            "mode": self.mode,
            "rule": self.rule,
            "final_accuracy": self.final_accuracy,
            "tradeoff": self.tradeoff.to_json(),
            "curve": self.curve.to_json(),
        }


def compare_methods(runs: list[RunRecords], rules: list[ExitRule], fallback: str = "most_confident") -> list[MethodRow]:
    """Every run under every rule (thresholds chosen on each run's validation record, read on its
    test record); the runs must share their test inputs (the same ids and labels), or a comparison
    would compare data sets."""
    if not runs:
        raise ArgumentError("compare needs at least one run")
    first = runs[0].test
    for r in runs[1:]:
        same = r.test.num_inputs == first.num_inputs and np.array_equal(r.test.ids, first.ids)
        if not same or not np.array_equal(r.test.labels, first.labels):
            raise ArgumentError(
                f"{r.name} was tested on other inputs than {runs[0].name}: compare runs of one data set"
            )
    rows = []
    for r in runs:
        if r.test.num_outputs < 2:
            raise ArgumentError(f"{r.name} is a plain CNN: it has no early exits to compare")
        usable = [q for q in rules if q.name != "patience" or q.k <= r.test.num_outputs - 1]
        cmp = compare_rules(r.val, r.test, usable, fallback=fallback)
        final = float(r.test.accuracy()[-1])
        for res in cmp.results:
            assert res.tradeoff is not None
            rows.append(MethodRow(r.name, r.mode, res.rule.label, final, res.tradeoff, res.curve))
    return rows
