"""How far the calibrated early exits carry beyond clean test inputs: attacked and corrupted copies of
the test split (the same inputs, shifted) and unfamiliar inputs (another distribution).

Every figure is a function of exit records and the engine's calibrated rule (what ``predict``, the
engine and the deployed runtime decide), so it says what a deployment would have paid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.drift import ExitProfile, exit_profile
from ..core.errors import ArgumentError
from ..core.exit_rule import ExitRule
from ..core.io import JSONObject
from .confusion import auroc, confusion_scores
from .early_exit import EarlyExit
from .record import ExitRecord
from .rules import answer_confidence, calibrated_exits

KINDS = ("attack", "corruption")


@dataclass(frozen=True)
class ExitSummary:
    """The calibrated early exits on one set of inputs: their accuracy, the final output's on the same
    inputs, the mean cost relative to the CNN's and the share of inputs that left at each output."""

    accuracy: float | None  # None for unlabelled (unfamiliar) inputs
    final_accuracy: float | None
    relative_cost: float
    exit_shares: list[float]

    @property
    def saving(self) -> float:
        """The share of the CNN's cost the exits saved (negative: the ICs cost more than they saved)."""
        return 1.0 - self.relative_cost

    def to_json(self) -> JSONObject:
        return {
            "accuracy": self.accuracy,
            "final_accuracy": self.final_accuracy,
            "relative_cost": self.relative_cost,
            "exit_shares": self.exit_shares,
        }


def summarize(record: ExitRecord, exits: EarlyExit, labelled: bool = True) -> ExitSummary:
    """An :class:`ExitSummary` of ``exits`` decided on ``record`` (accuracies only when ``labelled``)."""
    n = max(record.num_inputs, 1)
    return ExitSummary(
        accuracy=float(exits.accuracy) if labelled else None,
        final_accuracy=float(record.correct[:, -1].mean()) if labelled and record.num_inputs else None,
        relative_cost=float(exits.relative_cost),
        exit_shares=[c / n for c in exits.exit_counts],
    )


def _bound(calibration_rule: dict[str, float], s: ExitSummary) -> tuple[str, bool]:
    """The promise the calibration made on validation, and whether ``s`` keeps it."""
    if "latency_budget_ms" in calibration_rule:  # the records' costs are measured times (analysis.latency)
        ms, b = float(calibration_rule["latency_budget_ms"]), float(calibration_rule["budget"])
        return f"mean latency <= {ms:g} ms on the profiled device", s.relative_cost <= b + 1e-12
    if "budget" in calibration_rule:
        b = float(calibration_rule["budget"])
        return f"relative cost <= {b:g}", s.relative_cost <= b + 1e-12
    d = float(calibration_rule.get("max_drop", 0.0))
    held = s.accuracy is not None and s.final_accuracy is not None and s.accuracy >= s.final_accuracy - d - 1e-12
    return f"accuracy within {100 * d:g} % of the final output", held


@dataclass(frozen=True)
class ShiftedExits:
    """The calibrated exits on a shifted copy of (part of) the test split, beside the same clean inputs.

    ``kind`` is ``attack`` or ``corruption``; ``setting`` the attack's or corruption's parameters;
    ``saving_kept`` the share of the clean saving left (``None`` when the clean inputs saved nothing);
    ``bound`` the calibration's promise (an accuracy drop or a cost budget, made on validation),
    ``holds`` whether the shifted inputs keep it and ``clean_holds`` whether the same inputs clean do."""

    name: str
    kind: str
    setting: JSONObject
    inputs: int
    clean: ExitSummary
    shifted: ExitSummary
    saving_kept: float | None
    bound: str
    holds: bool
    clean_holds: bool

    def to_json(self) -> JSONObject:
        return {
            "name": self.name,
            "kind": self.kind,
            "setting": self.setting,
            "inputs": self.inputs,
            "clean": self.clean.to_json(),
            "shifted": self.shifted.to_json(),
            "saving_kept": self.saving_kept,
            "bound": self.bound,
            "holds": self.holds,
            "clean_holds": self.clean_holds,
        }


def _same_inputs(clean: ExitRecord, shifted: ExitRecord) -> ExitRecord:
    """The clean record's inputs that ``shifted`` holds, in its order (matched by id)."""
    where = {int(i): k for k, i in enumerate(clean.ids)}
    missing = [int(i) for i in shifted.ids if int(i) not in where]
    if missing:
        raise ArgumentError(f"the shifted record holds {len(missing)} inputs the clean test record lacks")
    return clean.subset(np.asarray([where[int(i)] for i in shifted.ids], dtype=np.int64))


def shifted_exits(
    clean: ExitRecord,
    shifted: ExitRecord,
    rule: ExitRule,
    calibration_rule: dict[str, float],
    *,
    name: str,
    kind: str,
    setting: JSONObject,
) -> ShiftedExits:
    """Compare the calibrated ``rule``'s exits on ``shifted`` with those on the same inputs of
    ``clean`` (the test record); ``calibration_rule`` is the calibration's goal (``max_drop`` or
    ``budget``), the promise checked on the shifted inputs."""
    base = _same_inputs(clean, shifted)
    c = summarize(base, calibrated_exits(base, rule))
    s = summarize(shifted, calibrated_exits(shifted, rule))
    kept = s.saving / c.saving if c.saving > 1e-9 else None
    bound, holds = _bound(calibration_rule, s)
    clean_holds = _bound(calibration_rule, c)[1]
    return ShiftedExits(name, kind, setting, shifted.num_inputs, c, s, kept, bound, holds, clean_holds)


@dataclass(frozen=True)
class Unfamiliar:
    """Where unfamiliar inputs (``source``: a data set or folder) exit and what they cost, beside the
    test split, and how well each output's confidence (max softmax; familiar inputs score higher) and
    the confusion metric (unfamiliar inputs score higher) tell them from the test inputs: AUROC, 0.5
    being chance."""

    source: str
    inputs: int
    test: ExitSummary
    unfamiliar: ExitSummary
    confidence_auroc: list[float | None]
    confusion_auroc: float | None

    def to_json(self) -> JSONObject:
        return {
            "source": self.source,
            "inputs": self.inputs,
            "test": self.test.to_json(),
            "unfamiliar": self.unfamiliar.to_json(),
            "confidence_auroc": self.confidence_auroc,
            "confusion_auroc": self.confusion_auroc,
        }


def unfamiliar_exits(test: ExitRecord, unfamiliar: ExitRecord, rule: ExitRule, source: str) -> Unfamiliar:
    """The calibrated ``rule``'s exits on ``unfamiliar`` inputs against the ``test`` record's, and
    the AUROC of each output's confidence and of confusion for telling them apart (labels of
    ``unfamiliar`` are meaningless: its accuracies are not reported)."""
    familiar = np.concatenate([np.ones(test.num_inputs, bool), np.zeros(unfamiliar.num_inputs, bool)])
    conf = np.concatenate([test.confidence, unfamiliar.confidence])  # [N, outputs]
    # confusion is normalised per record in the paper; AUROC depends on ranks only, so raw scores do
    confused = np.concatenate([confusion_scores(test), confusion_scores(unfamiliar)])
    return Unfamiliar(
        source=source,
        inputs=unfamiliar.num_inputs,
        test=summarize(test, calibrated_exits(test, rule)),
        unfamiliar=summarize(unfamiliar, calibrated_exits(unfamiliar, rule), labelled=False),
        confidence_auroc=[auroc(conf[:, i], familiar) for i in range(test.num_outputs)],
        confusion_auroc=auroc(confused, ~familiar),
    )


def validation_profile(val: ExitRecord, rule: ExitRule) -> ExitProfile:
    """The validation split's exits and answer confidences under the calibrated ``rule``: what the
    drift monitor of the engine and of the deployed runtime compares today's inputs with."""
    exits = calibrated_exits(val, rule)
    return exit_profile(exits.exits, answer_confidence(val, rule, exits), val.relative_costs)
