"""Thresholds for a latency budget: calibration against measured stage times instead of FLOPs.

A record's costs are FLOPs per output; :func:`timed` gives the same record with each output's cost
replaced by the measured milliseconds of an input that leaves there (its stages summed, from a
:class:`~shallowdeep.core.latency.LatencyProfile`) and the plain network's milliseconds as the
reference cost. Every calibration then works unchanged: "relative cost within b" becomes "expected
mean latency within b times the plain network's". A percentile budget (the 95th: 95 % of the
inputs answer within it) cannot be written as a mean, so it is swept apart: the share of inputs
leaving at or before each output is known at every threshold, and the latency at a percentile is
that of the first output where the share reaches it (each stage at its measured percentile time).
A mean budget uses each stage's mean time: on a noisy machine the mean lies well above the median.
Per-IC thresholds are chosen for mean budgets only (their search trades mean cost).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..core.errors import ArgumentError
from ..core.exit_rule import ExitRule
from ..core.io import JSONObject
from ..core.latency import LatencyProfile
from .early_exit import Calibration, Sweep, calibrate, early_exit, sweep
from .record import ExitRecord
from .rules import rule_records, rule_scores, rule_thresholds


@dataclass(frozen=True)
class LatencyBudget:
    """How thresholds are chosen against time: the most accurate whose expected latency (the mean
    over the validation inputs, or their ``percentile``-th percentile) fits ``ms`` on the profiled
    device."""

    ms: float
    percentile: int | None = None  # None: the mean

    def __post_init__(self) -> None:
        if not (isinstance(self.ms, (int, float)) and 0 < self.ms < float("inf")):
            raise ArgumentError(f"`latency_budget` is a positive number of milliseconds, got {self.ms}")
        if self.percentile is not None and self.percentile not in (50, 95, 99):
            raise ArgumentError(f"`latency_percentile` is 50, 95 or 99, got {self.percentile}")

    @property
    def statistic(self) -> str:
        return "mean" if self.percentile is None else f"p{self.percentile}"

    def to_json(self) -> JSONObject:
        return {"ms": self.ms, "percentile": self.percentile}


@dataclass(frozen=True)
class ExpectedLatency:
    """One split's expected latency at a threshold: mean, and the percentile asked for (or the p95)."""

    accuracy: float
    mean_ms: float
    percentile_ms: float
    exit_counts: list[int]

    def to_json(self) -> JSONObject:
        return {
            "accuracy": self.accuracy,
            "mean_ms": self.mean_ms,
            "percentile_ms": self.percentile_ms,
            "exit_counts": self.exit_counts,
        }


@dataclass(frozen=True)
class LatencyCalibration:
    """Thresholds chosen on validation for a latency budget, what they are expected to cost on both
    splits, the FLOP-calibrated thresholds' expected latency beside them (``flops``: the max-drop
    point's), and the accuracy-latency curves (``curves``: val and test, costs in milliseconds)."""

    budget: LatencyBudget
    device: str  # the profile's one-line description
    plain_ms: float
    calibration: Calibration  # its relative costs are latency relative to the plain network's
    val: ExpectedLatency
    test: ExpectedLatency
    flops: ExpectedLatency  # test split, at the FLOP-calibrated max-drop thresholds
    curves: dict[str, Sweep]

    def to_json(self) -> JSONObject:
        return {
            "budget": self.budget.to_json(),
            "statistic": self.budget.statistic,
            "device": self.device,
            "plain_ms": self.plain_ms,
            "calibration": self.calibration.to_json(),
            "val": self.val.to_json(),
            "test": self.test.to_json(),
            "flop_calibrated": self.flops.to_json(),
            "curves": {k: _ms_curve(v, self.plain_ms) for k, v in self.curves.items()},
        }


def _ms_curve(s: Sweep, plain_ms: float) -> JSONObject:
    return {
        "thresholds": s.thresholds.tolist(),
        "accuracy": s.accuracy.tolist(),
        "ms": (s.relative_cost * plain_ms).tolist(),
    }


def timed(record: ExitRecord, profile: LatencyProfile, percentile: int | None = None) -> ExitRecord:
    """``record`` with each output's cost the milliseconds of an input leaving there (its stages'
    mean times, or their times at ``percentile``) and the plain network's as the reference."""
    if profile.num_outputs != record.num_outputs:
        raise ArgumentError(
            f"the latency profile has {profile.num_outputs} stages, the run {record.num_outputs} outputs: "
            "profile this run"
        )
    return replace(
        record, costs=profile.cumulative_ms(percentile).astype(np.float64), cnn_cost=profile.plain_ms(percentile)
    )


def percentile_sweep(s: Sweep, record: ExitRecord, percentile: int) -> Sweep:
    """``s`` (a sweep of a :func:`timed` record) with each threshold's cost the ``percentile``-th
    percentile of the inputs' latency instead of the mean (nearest rank), relative to the plain's."""
    n = max(int(s.exit_counts.sum(1).max()), 1)
    rank = int(np.ceil(percentile / 100 * n))
    reached = np.cumsum(s.exit_counts, axis=1) >= rank  # [T, K]: the share leaving by output k reaches it
    first = reached.argmax(1)
    return replace(s, relative_cost=record.costs[first] / record.cnn_cost)


def _expected(record: ExitRecord, threshold, fallback: str, scores, percentile: int | None) -> ExpectedLatency:
    e = early_exit(record, threshold, fallback, scores)
    ms = record.costs[e.exits] if record.num_inputs else np.zeros(1)
    p = 95 if percentile is None else percentile
    return ExpectedLatency(
        e.accuracy, float(ms.mean()), float(np.percentile(ms, p, method="inverted_cdf")), e.exit_counts
    )


def latency_calibration(
    val: ExitRecord,
    test: ExitRecord,
    profile: LatencyProfile,
    budget: LatencyBudget,
    rule: ExitRule,
    *,
    temperatures: np.ndarray | None = None,
    ensemble=None,
    fallback: str = "most_confident",
    per_ic: bool | str = False,
    flop_thresholds: float | list[float] | None = None,
) -> LatencyCalibration:
    """The ``rule``'s thresholds (per IC where ``per_ic`` says so and the budget is a mean) for the
    best validation accuracy whose expected latency on ``profile``'s device fits ``budget``;
    ``flop_thresholds`` (the FLOP-calibrated ones of the same rule) are reported beside."""
    pct = budget.percentile
    v, t = (timed(r, profile, pct) for r in (val, test))
    v, t = rule_records(rule, (v, t), temperatures, ensemble)
    th, vs, ts = rule_thresholds(v, rule), rule_scores(v, rule), rule_scores(t, rule)
    curves = {"val": sweep(v, th, fallback, vs), "test": sweep(t, th, fallback, ts)}
    if pct is not None:
        curves = {k: percentile_sweep(c, r, pct) for (k, c), r in zip(curves.items(), (v, t))}
        per_ic = False
    rel = budget.ms / v.cnn_cost
    try:
        cal = calibrate(
            v,
            t,
            budget=rel,
            fallback=fallback,
            thresholds=th,
            swept=curves["val"],
            val_scores=vs,
            test_scores=ts,
            per_ic=per_ic,
        )
    except ArgumentError:
        cheapest = float(curves["val"].relative_cost.min() * v.cnn_cost)
        raise ArgumentError(
            f"no threshold keeps the expected {budget.statistic} latency within the `latency_budget` of "
            f"{budget.ms:g} ms on {profile.describe()} (the cheapest: {cheapest:.3g} ms): raise it"
        ) from None
    q = cal.exit_thresholds
    flops = _expected(t, q if flop_thresholds is None else flop_thresholds, fallback, ts, budget.percentile)
    return LatencyCalibration(
        budget,
        profile.describe(),
        v.cnn_cost,
        cal,
        _expected(v, q, fallback, vs, budget.percentile),
        _expected(t, q, fallback, ts, budget.percentile),
        flops,
        curves,
    )
