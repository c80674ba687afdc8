"""Every analysis of one run's records at once: what the report shows and ``report.json`` holds."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

import numpy as np

from ..core.drift import ExitProfile
from ..core.errors import ArgumentError
from ..core.exit_rule import ExitRule, check_fallback
from ..core.io import JSONObject
from ..core.latency import LatencyProfile
from ..core.outputs import output_names
from ..core.stopwatch import Stopwatch
from .backdoor import BackdoorResult, backdoor_figures
from .confusion import Confusion, confusion
from .early_exit import Calibration, ReferenceProtocol, Sweep, calibrate, early_exit, reference_protocol, sweep
from .latency import LatencyBudget, LatencyCalibration, latency_calibration, timed
from .overthinking import Overthinking, overthinking
from .record import ExitRecord
from .reliability import ClassAccuracy, Reliability, per_class, reliability
from .rules import DEFAULT_RULES, RuleComparison, compare_rules, rule_calibration
from .shift import ShiftedExits, Unfamiliar, shifted_exits, unfamiliar_exits, validation_profile


@dataclass(frozen=True)
class OutputRow:
    """One output's cumulative cost and accuracy on the validation and test splits."""

    output: str
    gflops: float
    relative_cost: float
    val_accuracy: float
    test_accuracy: float


@dataclass(frozen=True)
class AnalysisOptions:
    """How a run is analyzed: the accuracy drop (or the cost ``budget``) the thresholds may spend,
    the fallback, the exit rules compared, the ``rule`` the engine runs and how its thresholds are
    chosen (``thresholds``: ``"per_ic"`` one per IC, ``"single"`` one for every IC, the paper's;
    ``"auto"``: per-IC if cross-validation on the validation split says they win on held-out inputs)."""

    max_drop: float = 0.01
    budget: float | None = None
    fallback: str = "most_confident"
    rules: tuple[str, ...] = DEFAULT_RULES
    rule: str = "max_softmax"
    thresholds: str = "auto"
    latency: LatencyBudget | None = None  # the engine's thresholds for a latency budget (needs a profile)
    # parsed once in __post_init__: the rules compared (the engine's always among them), the engine's
    compared: tuple[ExitRule, ...] = field(init=False, repr=False, compare=False)
    chosen: ExitRule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_fallback(self.fallback)
        if not (isinstance(self.max_drop, (int, float)) and 0 <= self.max_drop <= 1):  # NaN fails too
            raise ArgumentError(f"`max_drop` is an accuracy drop in [0, 1], got {self.max_drop}")
        b = self.budget
        if b is not None and not (isinstance(b, (int, float)) and 0 < b < float("inf")):
            raise ArgumentError(f"`budget` is a cost relative to the CNN's and must be a positive number, got {b}")
        if self.thresholds not in ("auto", "per_ic", "single"):
            raise ArgumentError(
                f"`thresholds` is auto, per_ic (one per IC) or single (one for all ICs), not {self.thresholds!r}"
            )
        chosen = ExitRule.parse(self.rule)
        compared = [ExitRule.parse(r) for r in self.rules]
        if chosen.label not in [r.label for r in compared]:
            compared.append(chosen)
        object.__setattr__(self, "chosen", chosen)
        object.__setattr__(self, "compared", tuple(compared))

    def to_json(self) -> JSONObject:
        """As report.json records them (a kept report is reused only for the same options)."""
        return {
            "max_drop": self.max_drop,
            "budget": self.budget,
            "fallback": self.fallback,
            "rules": [r.label for r in self.compared],
            "rule": self.chosen.label,
            "thresholds": self.thresholds,
            "latency": None if self.latency is None else self.latency.to_json(),
        }


@dataclass(frozen=True)
class EngineChoice:
    """What ``predict`` and ``export`` run: the calibrated rule (thresholds chosen on validation,
    temperatures, fallback), how its thresholds were chosen, and its calibration's figures."""

    rule: ExitRule
    thresholds: str
    calibration: Calibration
    profile: ExitProfile  # the validation split's exits under the rule: what the drift monitor tests against
    latency: LatencyCalibration | None = None  # chosen for a latency budget: its expected latency, its curves

    def to_json(self) -> JSONObject:
        d = {
            "rule": self.rule.label,
            "thresholds": self.thresholds,
            "calibration": self.calibration.to_json(),
            "exit_profile": self.profile.to_json(),
        }
        return d | ({"latency": self.latency.to_json()} if self.latency is not None else {})


@dataclass(frozen=True)
class BackdoorSpec:
    """A backdoored run's trigger: the class it points to and its description (for the report)."""

    target: int
    trigger: JSONObject


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
    engine: EngineChoice | None = None  # an SDN's: the rule predict runs
    shifts: list[ShiftedExits] = field(default_factory=list)  # attacked and corrupted test inputs
    unfamiliar: list[Unfamiliar] = field(default_factory=list)

    def to_json(self) -> JSONObject:
        ee: JSONObject = {
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
        if self.engine is not None:
            ee["engine"] = self.engine.to_json()
        if self.shifts:
            d["shifts"] = [x.to_json() for x in self.shifts]
        if self.unfamiliar:
            d["unfamiliar"] = [x.to_json() for x in self.unfamiliar]
        return d


def _feasible_rules(o: AnalysisOptions, num_ics: int) -> AnalysisOptions:
    """The options with every patience rule checked against the ICs there are: asked for, one that
    needs more agreeing ICs than the network has is refused (its threshold would lie above 1); among
    the default rules compared, it is left out."""

    def fits(text: str) -> bool:
        rule = ExitRule.parse(text)
        return rule.name != "patience" or rule.k <= num_ics

    if not fits(o.rule):
        raise ArgumentError(
            f"the `rule` {o.rule} needs more agreeing ICs than the network's {num_ics}: "
            f"choose patience:K with K in 1..{num_ics}"
        )
    if o.rules == DEFAULT_RULES:
        return replace(o, rules=tuple(r for r in o.rules if fits(r)))
    too_many = [r for r in o.rules if not fits(r)]
    if too_many:
        raise ArgumentError(
            f"`rules` {', '.join(too_many)} need more agreeing ICs than the network's {num_ics}: "
            f"choose patience:K with K in 1..{num_ics}"
        )
    return o


def analyze(
    records: dict[str, ExitRecord],
    options: AnalysisOptions | None = None,
    *,
    max_drop: float = 0.01,
    budget: float | None = None,
    fallback: str = "most_confident",
    backdoor: BackdoorSpec | None = None,
    clock: Stopwatch | None = None,
    latency: LatencyProfile | None = None,
) -> RunAnalysis:
    """Every analysis from a run's ``"train"``, ``"val"`` and ``"test"`` records (train only
    normalises confusion): the outputs, early exits, overthinking, confusion, reliability; for an
    SDN the exit rules compared and the engine's rule calibrated; with ``backdoor`` (and a
    ``"test+trigger"`` record) the backdoor's figures. ``options`` (or ``max_drop``, ``budget``,
    ``fallback``) say how; ``clock`` gets the ``analyses`` and the engine's ``calibration`` parts;
    ``latency`` (the run's measured stage times) serves the options' latency budget."""
    o = options if options is not None else AnalysisOptions(max_drop, budget, fallback)
    if o.latency is not None and latency is None:
        raise ArgumentError("a `latency_budget` needs the run's measured stage times: profile the run first")
    val, test = records["val"], records["test"]
    o = _feasible_rules(o, test.num_outputs - 1) if test.num_outputs > 1 else o
    curves = {"val": sweep(val, fallback=o.fallback), "test": sweep(test, fallback=o.fallback)}
    calibrated = calibrate(val, test, max_drop=o.max_drop, fallback=o.fallback, swept=curves["val"])

    def at(per: bool, **goal: float) -> Calibration:
        return calibrate(val, test, fallback=o.fallback, swept=curves["val"], per_ic=per, **goal)

    sdn = test.num_outputs > 1
    # the rules are compared at the max-drop operating point (a budget may be out of reach of patience)
    rules = compare_rules(val, test, list(o.compared), max_drop=o.max_drop, fallback=o.fallback) if sdn else None
    analysis = RunAnalysis(
        num_outputs=test.num_outputs,
        cnn_gflops=float(test.cnn_cost / 1e9),
        outputs=_output_rows(val, test),
        fallback=o.fallback,
        calibrated=calibrated,
        calibrated_budget=None if o.budget is None else at(False, budget=o.budget),
        per_ic=at(True, max_drop=o.max_drop),
        per_ic_budget=None if o.budget is None else at(True, budget=o.budget),
        reference=reference_protocol(test, o.max_drop, o.fallback),
        curves=curves,
        overthinking=overthinking(test),
        confusion=confusion(test, stats=records.get("train")),
        reliability=reliability(test),
        per_class=per_class(test, early_exit(test, calibrated.threshold, o.fallback).predictions),
        backdoor=_backdoor(records, backdoor, calibrated.threshold if sdn else None, o.fallback),
        rules=rules,
    )
    if clock is not None:
        clock.lap("analyses")
    if rules is None:
        return analysis
    engine = _engine_choice(val, test, o, rules, latency)  # per-IC thresholds are cross-validated: the slow part
    if clock is not None:
        clock.lap("calibration")
    return replace(analysis, engine=engine, **_shifts(records, engine, latency))


def _output_rows(val: ExitRecord, test: ExitRecord) -> list[OutputRow]:
    names, val_acc, test_acc = output_names(test.num_outputs), val.accuracy(), test.accuracy()
    return [
        OutputRow(
            names[i], float(test.costs[i] / 1e9), float(test.relative_costs[i]), float(val_acc[i]), float(test_acc[i])
        )
        for i in range(test.num_outputs)
    ]


def _backdoor(
    records: dict[str, ExitRecord], spec: BackdoorSpec | None, threshold: float | None, fallback: str
) -> BackdoorResult | None:
    if spec is None:
        return None
    if "test+trigger" not in records:
        raise ArgumentError("a backdoor analysis needs the triggered test record (`test+trigger`)")
    return backdoor_figures(records["test"], records["test+trigger"], spec.target, spec.trigger, threshold, fallback)


def _engine_choice(
    val: ExitRecord, test: ExitRecord, o: AnalysisOptions, rules: RuleComparison, latency: LatencyProfile | None
) -> EngineChoice:
    """The engine's rule, its thresholds chosen on validation. With a budget, the operating point is
    the budget's for max softmax (the max-drop one stays in the report); another rule is calibrated
    at the max-drop point (a budget may be out of patience's reach). With a latency budget, any
    rule's thresholds are chosen for it (:mod:`.latency`)."""
    rule = o.chosen
    temps = rules.temperatures if rule.temperature else None
    goal = {"budget": o.budget} if o.budget is not None and rule.label == "max_softmax" else {}
    per_ic = {"auto": "auto", "per_ic": True, "single": False}[o.thresholds]
    cal = rule_calibration(
        val,
        test,
        rule,
        np.asarray(temps) if temps else None,
        ensemble=rules.ensemble,
        max_drop=o.max_drop,
        fallback=o.fallback,
        per_ic=per_ic,
        **goal,
    )
    ensemble = rules.ensemble if rule.ensembled else None
    lat = None
    if o.latency is not None and latency is not None:
        lat = latency_calibration(
            val,
            test,
            latency,
            o.latency,
            rule,
            temperatures=np.asarray(temps) if temps else None,
            ensemble=ensemble,
            fallback=o.fallback,
            per_ic=per_ic,
            flop_thresholds=cal.exit_thresholds,
        )
        cal = replace(lat.calibration, rule=_latency_goal(o.latency, lat.plain_ms))
    chosen = rule.calibrated(cal.exit_thresholds, temps, o.fallback, ensemble)
    return EngineChoice(chosen, o.thresholds, cal, validation_profile(val, chosen), lat)


def _latency_goal(budget: LatencyBudget, plain_ms: float) -> dict[str, float]:
    """A latency calibration's goal as calibration.json records it: the budget in milliseconds, its
    percentile (0: the mean) and the same budget relative to the plain network's time."""
    return {
        "latency_budget_ms": budget.ms,
        "latency_percentile": float(budget.percentile or 0),
        "budget": budget.ms / plain_ms,
    }


def _shifts(records: dict[str, ExitRecord], engine: EngineChoice, latency: LatencyProfile | None) -> dict[str, list]:
    """The engine's exits on every shifted record (told apart by what its metadata says it holds:
    an ``attack``, a ``corruption``, ``ood`` inputs), in the order of ``records``: ``RunAnalysis``'s
    ``shifts`` and ``unfamiliar``. Thresholds chosen for a latency budget are checked against it:
    the records' costs in measured milliseconds."""
    test, shifts, unfamiliar = records["test"], [], []
    goal = engine.calibration.rule
    if engine.latency is not None and latency is not None:
        pct = engine.latency.budget.percentile  # the times the goal's relative budget was computed with
        records = {k: timed(r, latency, pct) for k, r in records.items()}
        test = records["test"]
    for name, rec in records.items():
        if isinstance(rec.meta.get("ood"), str):
            unfamiliar.append(unfamiliar_exits(test, rec, engine.rule, rec.meta["ood"]))
            continue
        for kind in ("attack", "corruption"):
            if isinstance(rec.meta.get(kind), dict):
                setting = rec.meta[kind]
                shifts.append(shifted_exits(test, rec, engine.rule, goal, name=name, kind=kind, setting=setting))
    return {"shifts": shifts, "unfamiliar": unfamiliar}
