"""Analyses of exit records: pure, vectorised functions that never run the network."""
from .confusion import confusion
from .early_exit import REFERENCE_THRESHOLDS, calibrate, default_thresholds, early_exit, sweep
from .overthinking import overthinking

__all__ = ["REFERENCE_THRESHOLDS", "calibrate", "confusion", "default_thresholds", "early_exit", "overthinking", "sweep"]
