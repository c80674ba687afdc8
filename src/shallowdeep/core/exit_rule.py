"""The one exit rule (``ExitRule``, with ZTW's ``GeometricEnsemble``) and the numpy runtime's decision
(``exit_scores``): the deploy runtime's (``shallowdeep_deploy.exit_rule``), used by analysis,
calibration.json, the engine, the export manifest and the torch-free runtime alike."""

from shallowdeep_deploy.exit_rule import (
    EXIT_RULES,
    FALLBACKS,
    RULES,
    ExitRule,
    GeometricEnsemble,
    check_fallback,
    exit_scores,
    log_softmax,
    softmax,
)

__all__ = [
    "EXIT_RULES",
    "FALLBACKS",
    "RULES",
    "ExitRule",
    "GeometricEnsemble",
    "check_fallback",
    "exit_scores",
    "log_softmax",
    "softmax",
]
