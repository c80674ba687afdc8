"""The reproduction table as types: one :class:`TableRow` per analyzed SDN, in a :class:`Reproduction`.

:mod:`~shallowdeep.reproduction` fills it (from each stage's report.json and run.json, so that an
analysis kept from an earlier call counts as much as a new one), :mod:`~shallowdeep.report` lays it
out; ``reproduction.json`` is its :meth:`Reproduction.to_json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from .core.io import JSONObject
from .core.schedule import TaskRun


@dataclass(frozen=True)
class OutputPoint:
    """One output alone: its cost relative to the CNN and its test accuracy."""

    output: str
    relative_cost: float
    test_accuracy: float


@dataclass(frozen=True)
class ThresholdPoint:
    """Early exits at one threshold (chosen on validation, or by the reference on test): test figures."""

    threshold: float
    test_accuracy: float | None
    test_relative_cost: float | None


@dataclass(frozen=True)
class EnginePoint:
    """What ``predict`` uses after the analysis: the rule, one threshold or per-IC ones, their test point."""

    rule: str
    per_ic: bool
    thresholds: list[float]
    test_accuracy: float
    test_relative_cost: float


@dataclass(frozen=True)
class RuleTradeoff:
    """One exit rule on a row's SDN, read as ZTW's tables read: the test accuracy at fixed shares of
    the CNN's cost (each threshold chosen on validation; None where no threshold fits the budget)
    and the area under the test accuracy-cost curve."""

    rule: str
    budgets: list[float]
    test_accuracy: list[float | None]
    auc: float

    @classmethod
    def from_report(cls, result: JSONObject) -> RuleTradeoff:
        """From one entry of report.json's ``rules.results``."""
        points = result["tradeoff"]["points"]
        return cls(
            result["label"],
            [p["budget"] for p in points],
            [p["test_accuracy"] for p in points],
            result["tradeoff"]["auc"],
        )


@dataclass
class TableRow:
    """One analyzed SDN of one architecture (``kind``: its stage, a method of the reproduction, such
    as ``ic-only``, ``sdn`` or ``mixed``), its exit rules' trade-offs beside. The ``stage_*`` maps
    are its architecture's, shared by its rows and filled in as the stages finish: wall seconds per
    stage and analysis, the part in epochs, an analysis's own time in the background, how each
    stage trained (run.json's runtime)."""

    arch: str
    kind: str
    outputs: list[OutputPoint]
    final_test_accuracy: float
    calibrated: ThresholdPoint
    engine: EnginePoint | None
    reference_protocol: ThresholdPoint
    early_share: float
    destructive_share: float | None
    confusion_auroc: float | None
    confidence_auroc: float | None
    epochs: int
    median_epoch_seconds: float | None
    runtime: JSONObject
    report: str
    tradeoffs: list[RuleTradeoff] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    stage_epoch_seconds: dict[str, float] = field(default_factory=dict)
    stage_background_seconds: dict[str, float] = field(default_factory=dict)
    stage_runtime: dict[str, JSONObject] = field(default_factory=dict)

    @classmethod
    def from_report(
        cls, arch: str, kind: str, r: JSONObject, epoch_s: list[float], runtime: JSONObject, report: Path, out: Path
    ) -> TableRow:
        """The row of one stage's report.json ``r`` (its report page at ``report``, linked from ``out``)."""
        ee = r["early_exit"]
        cal, ref = ee["calibrated"], ee["reference_protocol"]
        ref_row = next((x for x in ref["rows"] if x["threshold"] == ref["chosen_threshold"]), None)
        o, c = r["overthinking"], r["confusion"]
        outputs = [OutputPoint(x["output"], x["relative_cost"], x["test_accuracy"]) for x in r["outputs"]]
        chosen = ThresholdPoint(cal["threshold"], cal["test"]["accuracy"], cal["test"]["relative_cost"])
        reference = ThresholdPoint(
            ref["chosen_threshold"],
            ref_row["accuracy"] if ref_row else None,
            ref_row["relative_cost"] if ref_row else None,
        )
        return cls(
            arch,
            kind,
            outputs,
            outputs[-1].test_accuracy,
            chosen,
            _engine_point(ee.get("engine")),
            reference,
            o["early_share"],
            o["destructive"]["union_share_of_final_errors"],
            c["confusion"]["auroc"],
            c["confidence"]["auroc"],
            len(epoch_s),
            epoch_s[len(epoch_s) // 2] if epoch_s else None,
            runtime,
            str(report.relative_to(out)) if report.is_relative_to(out) else str(report),
            [RuleTradeoff.from_report(x) for x in (r.get("rules") or {}).get("results", [])],
        )

    def to_json(self) -> JSONObject:
        return asdict(self)


def _engine_point(engine: JSONObject | None) -> EnginePoint | None:
    if not engine:
        return None
    cal = engine["calibration"]
    thresholds = cal.get("thresholds") or [cal["threshold"]]
    test = cal["test"]
    return EnginePoint(
        engine["rule"], cal.get("thresholds") is not None, thresholds, test["accuracy"], test["relative_cost"]
    )


@dataclass
class Reproduction:
    """A reproduction's table so far: the data set, the device, each stage's epochs, the rows, the
    paper's claims beside them; this call's wall time and the steps compiled in the background; how
    many stages could run at once and, when several could, when each ran and where (``schedule``)."""

    data: str
    device: str
    epochs: dict[str, int]
    rows: list[TableRow] = field(default_factory=list)
    paper_claims: dict[str, str] = field(default_factory=dict)
    note: str = "thresholds chosen on the validation split, reported on the test split"
    call_seconds: float | None = None
    compiled_ahead: list[JSONObject] | None = None
    max_concurrent: int = 1
    schedule: list[TaskRun] | None = None
    methods: list[str] = field(default_factory=lambda: ["ic-only", "sdn"])

    def ran_together(self) -> list[tuple[TaskRun, list[str]]]:
        """Each scheduled task that ran, with the names of those that ran while it did."""
        ran = [t for t in self.schedule or [] if t.seconds is not None]
        return [(t, [o.name for o in ran if o is not t and t.overlaps(o)]) for t in ran]

    def first_row_per_arch(self) -> list[TableRow]:
        """One row per architecture: what its rows share (stage times, how each stage trained)."""
        seen: dict[str, TableRow] = {}
        for r in self.rows:
            seen.setdefault(r.arch, r)
        return list(seen.values())

    def to_json(self) -> JSONObject:
        d = {"data": self.data, "device": self.device, "epochs": self.epochs, "methods": self.methods}
        d["rows"] = [r.to_json() for r in self.rows]
        d |= {"paper_claims": self.paper_claims, "note": self.note}
        if self.call_seconds is not None:
            d["call_seconds"] = self.call_seconds
        if self.compiled_ahead is not None:
            d["compiled_ahead"] = self.compiled_ahead
        d["max_concurrent"] = self.max_concurrent
        if self.schedule is not None:
            d["schedule"] = [t.to_json() for t in self.schedule]
        return d
