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


def save_calibration(
    run: str | Path,
    calibration: Calibration,
    weights_sha256: str,
    exit_rule: dict | None = None,
    temperatures: list[float] | None = None,
) -> Path:
    """Write the threshold chosen on the validation split for these weights (and the exit rule it
    belongs to, with its temperatures); return the file."""
    folder = RunFolder(run)
    folder.write_json(
        folder.calibration,
        calibration.to_json()
        | {
            "weights_sha256": weights_sha256,
            "exit_rule": exit_rule or {"name": "max_softmax", "k": 0, "temperature": False},
            "temperatures": temperatures,
        },
    )
    return folder.calibration


def _exit_rule(d: dict, path: Path) -> tuple[str, int, list[float] | None]:
    r = d.get("exit_rule") or {"name": "max_softmax"}
    temps = d.get("temperatures")
    try:
        name, k = str(r.get("name", "max_softmax")), int(r.get("k", 0))
        if temps is not None:
            temps = [float(t) for t in temps]
            if not all(0 < t < float("inf") for t in temps):
                raise ValueError("temperatures must be positive")
    except (TypeError, ValueError, AttributeError) as e:
        raise RunFolderError(f"{path} has a damaged exit rule ({e}): analyze the run again") from None
    return name, k, temps


def _read(run: str | Path) -> tuple[Calibration, dict]:
    """The run's calibration and the raw file, refused if missing, malformed or made for other weights."""
    folder = RunFolder(run)
    if not folder.calibration.is_file():
        raise NotCalibratedError(f"{run} has no calibrated threshold: analyze the run first or give a `threshold`")
    d = read_json(folder.calibration)
    if d.get("weights_sha256") != folder.weights_sha256():
        raise NotCalibratedError(
            f"{folder.calibration} was calibrated for other weights: analyze the run again or give a `threshold`"
        )
    try:
        return Calibration.from_json(d), d
    except ArgumentError as e:
        raise RunFolderError(f"{folder.calibration} is damaged ({e}): analyze the run again") from None


def read_calibration(run: str | Path) -> Calibration:
    """The run's calibration, refused if missing, malformed or made for other weights."""
    return _read(run)[0]


def engine_from_run(
    run: str | Path, threshold: float | None = None, fallback: str | None = None, device: torch.device | str = "cpu"
) -> EarlyExitEngine:
    """The early-exit engine of a run, at its calibrated threshold unless one is given (an explicit
    threshold keeps the calibrated fallback when there is one)."""
    folder = RunFolder(run)
    if folder.kind() != "sdn":
        raise RunFolderError(f"{run} is a plain CNN run: early exits need an SDN; make one from it by ic-only training")
    model = load(run, device)
    assert isinstance(model, SDN)
    rule, k, temps = "max_softmax", 0, None
    if threshold is None:
        cal, raw = _read(run)  # one read of the file, one hash of the weights
        threshold, fallback = cal.exit_thresholds, fallback or cal.fallback
        rule, k, temps = _exit_rule(raw, folder.calibration)
    elif fallback is None and folder.calibration.is_file():
        try:
            fallback = read_calibration(run).fallback
        except RunFolderError:
            pass  # no usable calibration: the default fallback
    try:
        return EarlyExitEngine(
            model, threshold, fallback or "most_confident", device, rule=rule, patience=k, temperatures=temps
        )
    except ArgumentError as e:
        raise RunFolderError(f"{folder.calibration} does not fit this model ({e}): analyze the run again") from None
