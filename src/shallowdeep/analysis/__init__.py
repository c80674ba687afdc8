"""Analyses of exit records: pure, vectorised functions that never run the network (numpy only)."""

from ..core.exit_rule import ExitRule
from .backdoor import BackdoorResult, backdoor_figures
from .confusion import Confusion, confusion
from .early_exit import (
    FALLBACKS,
    REFERENCE_THRESHOLDS,
    Calibration,
    EarlyExit,
    OperatingPoint,
    ReferenceProtocol,
    Sweep,
    calibrate,
    default_thresholds,
    early_exit,
    reference_protocol,
    sweep,
)
from .ensemble import ensembled, fit_ensemble
from .overthinking import Overthinking, overthinking
from .record import ExitRecord
from .reliability import ClassAccuracy, Reliability, per_class, reliability
from .rules import (
    DEFAULT_RULES,
    RuleComparison,
    compare_rules,
    fit_temperatures,
    rule_calibration,
)
from .summary import AnalysisOptions, BackdoorSpec, EngineChoice, RunAnalysis, analyze
from .tradeoff import COST_FRACTIONS, CostPoint, Tradeoff, tradeoff

__all__ = [
    "COST_FRACTIONS",
    "CostPoint",
    "Tradeoff",
    "ensembled",
    "fit_ensemble",
    "tradeoff",
    "DEFAULT_RULES",
    "ExitRule",
    "RuleComparison",
    "compare_rules",
    "fit_temperatures",
    "rule_calibration",
    "ClassAccuracy",
    "Reliability",
    "per_class",
    "reliability",
    "FALLBACKS",
    "REFERENCE_THRESHOLDS",
    "BackdoorResult",
    "Calibration",
    "Confusion",
    "EarlyExit",
    "ExitRecord",
    "OperatingPoint",
    "Overthinking",
    "ReferenceProtocol",
    "AnalysisOptions",
    "BackdoorSpec",
    "EngineChoice",
    "RunAnalysis",
    "Sweep",
    "analyze",
    "backdoor_figures",
    "calibrate",
    "confusion",
    "default_thresholds",
    "early_exit",
    "overthinking",
    "reference_protocol",
    "sweep",
]
