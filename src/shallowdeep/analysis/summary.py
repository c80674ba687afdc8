"""Every analysis of one run's records at once: what the report shows and ``report.json`` holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..core.outputs import output_names
from .backdoor import BackdoorResult
from .confusion import Confusion, confusion
from .early_exit import Calibration, ReferenceProtocol, Sweep, calibrate, early_exit, reference_protocol, sweep
from .overthinking import Overthinking, overthinking
from .record import ExitRecord
from .reliability import ClassAccuracy, Reliability, per_class, reliability
from .rules import RuleComparison


@dataclass(frozen=True)
class OutputRow:
    """One output's cumulative cost and accuracy on the validation and test splits."""

    output: str
    gflops: float
    relative_cost: float
    val_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class RunAnalysis:
    """The analyses of a run's train/val/test records (validation chooses, test reports)."""

    num_outputs: int
    cnn_gflops: float
    outputs: list[OutputRow]
    fallback: str
    calibrated: Calibration  # one threshold for every IC (the paper's)
    calibrated_budget: Calibration | None
    per_ic: Calibration  # the same rule, one threshold per IC
    per_ic_budget: Calibration | None
    reference: ReferenceProtocol
    curves: dict[str, Sweep]  # "val", "test"
    overthinking: Overthinking
    confusion: Confusion
    reliability: list[Reliability]  # per output, on the test record
    per_class: ClassAccuracy  # final output and early exits at the calibrated threshold, test record
    backdoor: BackdoorResult | None = None
    rules: RuleComparison | None = None

    def to_json(self) -> dict[str, Any]:
        ee: dict[str, Any] = {
            "fallback": self.fallback,
            "calibrated": self.calibrated.to_json(),
            "reference_protocol": self.reference.to_json(),
            "curves": {k: v.to_json() for k, v in self.curves.items()},
        }
        if self.calibrated_budget is not None:
            ee["calibrated_budget"] = self.calibrated_budget.to_json()
        ee["per_ic"] = self.per_ic.to_json()
        if self.per_ic_budget is not None:
            ee["per_ic_budget"] = self.per_ic_budget.to_json()
        d = {
            "num_outputs": self.num_outputs,
            "cnn_gflops": self.cnn_gflops,
            "outputs": [asdict(o) for o in self.outputs],
            "early_exit": ee,
            "overthinking": self.overthinking.to_json(),
            "confusion": self.confusion.to_json(),
            "reliability": [r.to_json() for r in self.reliability],
            "per_class": self.per_class.to_json(),
        }
        if self.backdoor is not None:
            d["backdoor"] = self.backdoor.to_json()
        if self.rules is not None:
            d["rules"] = self.rules.to_json()
        return d


def analyze(
    records: dict[str, ExitRecord],
    *,
    max_drop: float = 0.01,
    budget: float | None = None,
    fallback: str = "most_confident",
) -> RunAnalysis:
    """Every analysis from a run's ``"train"``, ``"val"`` and ``"test"`` records (train only
    normalises confusion). The validation sweep is computed once and shared with calibration."""
    val, test = records["val"], records["test"]
    k = test.num_outputs
    names = output_names(k)
    val_acc, test_acc = val.accuracy(), test.accuracy()
    rows = [
        OutputRow(
            names[i], float(test.costs[i] / 1e9), float(test.relative_costs[i]), float(val_acc[i]), float(test_acc[i])
        )
        for i in range(k)
    ]
    curves = {"val": sweep(val, fallback=fallback), "test": sweep(test, fallback=fallback)}
    calibrated = calibrate(val, test, max_drop=max_drop, fallback=fallback, swept=curves["val"])

    def per_ic(**goal: float) -> Calibration:
        return calibrate(val, test, fallback=fallback, swept=curves["val"], per_ic=True, **goal)

    return RunAnalysis(
        num_outputs=k,
        cnn_gflops=float(test.cnn_cost / 1e9),
        outputs=rows,
        fallback=fallback,
        calibrated=calibrated,
        calibrated_budget=(
            calibrate(val, test, budget=budget, fallback=fallback, swept=curves["val"]) if budget is not None else None
        ),
        per_ic=per_ic(max_drop=max_drop),
        per_ic_budget=per_ic(budget=budget) if budget is not None else None,
        reference=reference_protocol(test, max_drop, fallback),
        curves=curves,
        overthinking=overthinking(test),
        confusion=confusion(test, stats=records.get("train")),
        reliability=reliability(test),
        per_class=per_class(test, early_exit(test, calibrated.threshold, fallback).predictions),
    )
