"""Exit rules compared on the same records (issue 14); the rules themselves are
:class:`~shallowdeep.core.exit_rule.ExitRule`.

Every rule is a *score* per IC and input, in [0, 1], and an input exits at the first IC whose score
reaches the threshold q, so the sweep and calibration of :mod:`.early_exit` serve every rule. Each
rule may run on temperature-scaled logits: one temperature per output, fitted on the validation
record by minimising its negative log-likelihood (Guo et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.errors import ArgumentError
from ..core.exit_rule import ExitRule, GeometricEnsemble, exit_scores
from ..core.io import JSONObject
from .early_exit import Calibration, EarlyExit, Sweep, calibrate, early_exit, sweep
from .ensemble import ensembled, fit_ensemble
from .record import ExitRecord
from .reliability import reliability
from .tradeoff import Tradeoff, tradeoff

DEFAULT_RULES = ("max_softmax", "max_softmax+T", "entropy", "entropy+T", "patience:2", "max_softmax+E")


# --------------------------------------------------------------------------------------------------
# temperatures


def _nll(logits: np.ndarray, labels: np.ndarray, t: float) -> float:
    z = logits.astype(np.float64) / t
    z -= z.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def fit_temperatures(val: ExitRecord, lo: float = 0.05, hi: float = 20.0) -> np.ndarray:
    """One temperature per output minimising the validation record's NLL (golden-section search on
    log T; the NLL of a temperature is unimodal in practice)."""
    temps = np.ones(val.num_outputs)
    if not val.num_inputs:
        return temps
    g = (np.sqrt(5) - 1) / 2
    for k in range(val.num_outputs):
        a, b = np.log(lo), np.log(hi)
        f = lambda u, k=k: _nll(val.logits[:, k, :], val.labels, float(np.exp(u)))
        c, d = b - g * (b - a), a + g * (b - a)
        fc, fd = f(c), f(d)
        for _ in range(60):
            if fc < fd:
                b, d, fd = d, c, fc
                c = b - g * (b - a)
                fc = f(c)
            else:
                a, c, fc = c, d, fd
                d = a + g * (b - a)
                fd = f(d)
        temps[k] = float(np.exp((a + b) / 2))
    return temps


def scaled(record: ExitRecord, temps: np.ndarray) -> ExitRecord:
    """The record with every output's logits divided by its temperature (predictions unchanged)."""
    return ExitRecord.from_arrays(
        record.logits / np.asarray(temps, np.float32)[None, :, None],
        record.labels,
        record.costs,
        record.cnn_cost,
        record.ids,
        record.meta,
    )


def rule_records(
    rule: ExitRule,
    records: tuple[ExitRecord, ...],
    temperatures: np.ndarray | None = None,
    ensemble: GeometricEnsemble | None = None,
) -> tuple[ExitRecord, ...]:
    """The records a rule runs on: as they are, temperature-scaled for a +T rule, the ensemble's for a
    +E rule (``ensemble`` fitted on the validation record by the caller)."""
    if rule.temperature:
        if temperatures is None:
            raise ArgumentError(f"the {rule.label} rule needs per-output temperatures")
        return tuple(scaled(r, temperatures) for r in records)
    if rule.ensembled:
        if ensemble is None:
            raise ArgumentError(f"the {rule.label} rule needs an ensemble fitted on the validation record")
        return tuple(ensembled(r, ensemble) for r in records)
    return records


# --------------------------------------------------------------------------------------------------
# scores


def rule_scores(record: ExitRecord, rule: ExitRule) -> np.ndarray:
    """The rule's score of every IC for every input, ``[inputs, ICs]`` in [0, 1]: the numpy
    runtime's decision (:func:`~shallowdeep.core.exit_rule.exit_scores`) IC by IC, as deployed."""
    k, n = record.num_outputs - 1, record.num_inputs
    scores = np.zeros((n, k))
    prev, run = np.full(n, -1), np.zeros(n)
    for i in range(k):
        pred = record.preds[:, i]
        scores[:, i], run = exit_scores(rule, record.probs[:, i, :], pred, k, prev, run)
        prev = pred
    return scores


def rule_thresholds(record: ExitRecord, rule: ExitRule) -> np.ndarray | None:
    """Thresholds to sweep: the default grid, or for patience the single ``k / ICs``."""
    if rule.name == "patience":
        return np.array([rule.k / max(record.num_outputs - 1, 1)])
    return None


# --------------------------------------------------------------------------------------------------
# the comparison


@dataclass(frozen=True)
class RuleResult:
    """One rule on one run: its test curve, the threshold the validation record chose, the test
    figures at that threshold, and the temperatures it used (``None``: raw logits)."""

    rule: ExitRule
    curve: Sweep
    calibration: Calibration
    temperatures: list[float] | None
    tradeoff: Tradeoff | None = None  # accuracy at fixed costs (validation chooses), the curve's area

    def to_json(self) -> JSONObject:
        return {
            "rule": self.rule.to_json(),
            "label": self.rule.label,
            "calibration": self.calibration.to_json(),
            "temperatures": self.temperatures,
            "curve": self.curve.to_json(),
            "tradeoff": None if self.tradeoff is None else self.tradeoff.to_json(),
        }


@dataclass(frozen=True)
class RuleComparison:
    """Every rule side by side, with the per-output temperatures and ECE before and after scaling
    (test record), and the geometric ensemble the +E rules run (fitted on the validation record)."""

    results: list[RuleResult]
    temperatures: list[float]  # per output, fitted on the validation record
    ece_before: list[float]
    ece_after: list[float]
    ensemble: GeometricEnsemble | None = None

    def to_json(self) -> JSONObject:
        return {
            "results": [r.to_json() for r in self.results],
            "temperatures": self.temperatures,
            "ece_before": self.ece_before,
            "ece_after": self.ece_after,
            "ensemble": None if self.ensemble is None else self.ensemble.to_json(),
        }


def rule_calibration(
    val: ExitRecord,
    test: ExitRecord | None,
    rule: ExitRule,
    temperatures: np.ndarray | None = None,
    *,
    ensemble: GeometricEnsemble | None = None,
    max_drop: float = 0.01,
    budget: float | None = None,
    fallback: str = "most_confident",
    per_ic: bool | str = False,
) -> Calibration:
    """One rule's threshold (or, with ``per_ic``, thresholds per IC; ``"auto"``: if cross-validation
    favours them) chosen on the validation record and reported on the test record;
    ``temperatures`` (per output) serve the +T rules, ``ensemble`` the +E ones (fitted on ``val``
    when not given)."""
    if rule.ensembled and ensemble is None:
        ensemble = fit_ensemble(val)
    if test is None:
        (val,) = rule_records(rule, (val,), temperatures, ensemble)
    else:
        val, test = rule_records(rule, (val, test), temperatures, ensemble)
    return calibrate(
        val,
        test,
        max_drop=max_drop,
        budget=budget,
        fallback=fallback,
        thresholds=rule_thresholds(val, rule),
        val_scores=rule_scores(val, rule),
        test_scores=rule_scores(test, rule) if test is not None else None,
        per_ic=per_ic,
    )


def _rule_result(
    rule: ExitRule, v: ExitRecord, t: ExitRecord, temps: np.ndarray, fallback: str, **goal: float | None
) -> RuleResult:
    """One rule on the records it runs on (``v``, ``t``: already scaled or ensembled): each record
    scored and swept once, the validation sweep serving the calibration and the fixed costs alike."""
    th = rule_thresholds(t, rule)
    v_scores, t_scores = rule_scores(v, rule), rule_scores(t, rule)
    val_curve, curve = sweep(v, th, fallback, v_scores), sweep(t, th, fallback, t_scores)
    cal = calibrate(
        v, t, fallback=fallback, thresholds=th, swept=val_curve, val_scores=v_scores, test_scores=t_scores, **goal
    )
    return RuleResult(rule, curve, cal, temps.tolist() if rule.temperature else None, tradeoff(val_curve, curve))


def compare_rules(
    val: ExitRecord,
    test: ExitRecord,
    rules: list[ExitRule],
    *,
    max_drop: float = 0.01,
    budget: float | None = None,
    fallback: str = "most_confident",
) -> RuleComparison:
    """Each rule's sweep on the test record and its threshold chosen on the validation record (the
    temperatures and the ensemble fitted once, on the validation record)."""
    temps = fit_temperatures(val)
    ensemble = fit_ensemble(val) if any(r.ensembled for r in rules) else None
    results = []
    for rule in rules:
        v, t = rule_records(rule, (val, test), temps, ensemble)
        results.append(_rule_result(rule, v, t, temps, fallback, max_drop=max_drop, budget=budget))
    return RuleComparison(
        results,
        temps.tolist(),
        [r.ece for r in reliability(test)],
        [r.ece for r in reliability(scaled(test, temps))],
        ensemble,
    )


def rule_view(
    record: ExitRecord, temperatures: np.ndarray | None = None, ensemble: GeometricEnsemble | None = None
) -> ExitRecord:
    """The record as a rule sees it: logits divided by ``temperatures``, then ZTW's ``ensemble``."""
    r = scaled(record, temperatures) if temperatures is not None else record
    return ensembled(r, ensemble) if ensemble is not None else r


def rule_exits(
    record: ExitRecord,
    rule: ExitRule,
    threshold: float | list[float],
    fallback: str = "most_confident",
    temperatures: np.ndarray | None = None,
    ensemble: GeometricEnsemble | None = None,
) -> EarlyExit:
    """Early exits of ``rule`` at ``threshold`` (the simulation the engine must match)."""
    r = rule_view(record, temperatures, ensemble)
    return early_exit(r, threshold, fallback, rule_scores(r, rule))


def _calibrated_view(record: ExitRecord, rule: ExitRule) -> ExitRecord:
    temps = np.asarray(rule.temperatures) if rule.temperature and rule.temperatures is not None else None
    return rule_view(record, temps, rule.fitted_ensemble(record.num_outputs))


def calibrated_exits(record: ExitRecord, rule: ExitRule) -> EarlyExit:
    """Early exits of a calibrated ``rule`` (its thresholds, temperatures, ensemble and fallback) on
    ``record``: what the engine and the deployed runtime decide for those inputs."""
    r = _calibrated_view(record, rule)
    return early_exit(r, rule.per_ic(record.num_outputs - 1), rule.fallback, rule_scores(r, rule))


def answer_confidence(record: ExitRecord, rule: ExitRule, exits: EarlyExit) -> np.ndarray:
    """Per input, the confidence the engine reports with its answer under the calibrated ``rule``:
    the max softmax of the output it left at; of an input no IC let out, the most confident
    output's (fallback ``most_confident``) or the final output's."""
    conf = _calibrated_view(record, rule).confidence
    last = record.num_outputs - 1
    fell = conf.max(1) if rule.fallback == "most_confident" else conf[:, last]
    left = conf[np.arange(record.num_inputs), np.minimum(exits.exits, last)]
    return np.where(exits.exits == last, fell, left)
