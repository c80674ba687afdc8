"""The engine's threshold of a run: ``calibration.json``, tied to the weights it was chosen for."""
from __future__ import annotations

from pathlib import Path

import torch

from ..analysis.early_exit import Calibration
from ..core.errors import ArgumentError, NotCalibratedError, RunFolderError
from ..core.io import read_json
from ..engine import EarlyExitEngine
from ..sdn import SDN
from .folder import RunFolder
from .weights import load


def save_calibration(run: str | Path, calibration: Calibration, weights_sha256: str) -> Path:
    """Write the threshold chosen on the validation split for these weights; return the file."""
    folder = RunFolder(run)
    folder.write_json(folder.calibration, calibration.to_json() | {"weights_sha256": weights_sha256})
    return folder.calibration


def read_calibration(run: str | Path) -> Calibration:
    """The run's calibration, refused if missing, malformed or made for other weights."""
    folder = RunFolder(run)
    if not folder.calibration.is_file():
        raise NotCalibratedError(f"{run} has no calibrated threshold: analyze the run first or give a `threshold`")
    d = read_json(folder.calibration)
    if d.get("weights_sha256") != folder.weights_sha256():
        raise NotCalibratedError(f"{folder.calibration} was calibrated for other weights: analyze the run again or "
                                 "give a `threshold`")
    try:
        return Calibration.from_json(d)
    except ArgumentError as e:
        raise RunFolderError(f"{folder.calibration} is damaged ({e}): analyze the run again") from None


def engine_from_run(run: str | Path, threshold: float | None = None, fallback: str | None = None,
                    device: torch.device | str = "cpu") -> EarlyExitEngine:
    """The early-exit engine of a run, at its calibrated threshold unless one is given (an explicit
    threshold keeps the calibrated fallback when there is one)."""
    folder = RunFolder(run)
    if folder.kind() != "sdn":
        raise RunFolderError(f"{run} is a plain CNN run: early exits need an SDN; make one from it by ic-only "
                             "training")
    model = load(run, device)
    assert isinstance(model, SDN)
    if threshold is None:
        cal = read_calibration(run)
        threshold, fallback = cal.threshold, fallback or cal.fallback
    elif fallback is None and folder.calibration.is_file():
        try:
            fallback = read_calibration(run).fallback
        except RunFolderError:
            pass  # no usable calibration: the default fallback
    return EarlyExitEngine(model, threshold, fallback or "most_confident", device)
