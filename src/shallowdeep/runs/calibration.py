"""The engine's exit rule of a run: ``calibration.json``, tied to the weights it was chosen for."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from ..analysis.early_exit import Calibration
from ..core.drift import ExitProfile
from ..core.errors import ArgumentError, NotCalibratedError, RunFolderError
from ..core.exit_rule import ExitRule
from ..core.io import JSONObject, read_json
from ..inference.engine import EarlyExitEngine
from ..models.sdn import SDN
from .folder import RunFolder
from .weights import load


def save_calibration(
    run: str | Path, calibration: Calibration, weights_sha256: str, rule: ExitRule, profile: ExitProfile | None = None
) -> Path:
    """Write the threshold chosen on the validation split for these weights and the exit rule that
    carries it out (with its thresholds, temperatures and fallback), and the validation split's
    exits under it (``profile``, for the drift monitor); return the file."""
    folder = RunFolder(run)
    extra = {"exit_profile": profile.to_json()} if profile is not None else {}
    folder.write_json(
        folder.calibration,
        calibration.to_json() | {"weights_sha256": weights_sha256, "exit_rule": rule.to_json()} | extra,
    )
    return folder.calibration


def _rule_of(d: JSONObject, cal: Calibration) -> ExitRule:
    """The file's exit rule; a file from 0.2.0 kept the rule's name apart from its thresholds and
    temperatures, and reads the same."""
    raw = d.get("exit_rule") or {"name": "max_softmax"}
    if isinstance(raw, dict) and "thresholds" not in raw:  # 0.2.0: {"name", "k", "temperature"} + "temperatures"
        raw = raw | {"thresholds": cal.exit_thresholds, "temperatures": d.get("temperatures"), "fallback": cal.fallback}
        if isinstance(raw["thresholds"], float):
            raw["thresholds"] = [raw["thresholds"]]
    return ExitRule.from_json(raw)


def _read(run: str | Path) -> tuple[Calibration, ExitRule, ExitProfile | None]:
    """The run's calibration, exit rule and exit profile (``None`` in a file made before profiles),
    refused if missing, malformed or made for other weights."""
    folder = RunFolder(run)
    if not folder.calibration.is_file():
        raise NotCalibratedError(f"{run} has no calibrated threshold: analyze the run first")
    d = read_json(folder.calibration)
    if d.get("weights_sha256") != folder.weights_sha256():
        raise NotCalibratedError(f"{folder.calibration} was calibrated for other weights: analyze the run again")
    try:
        cal = Calibration.from_json(d)
        profile = ExitProfile.from_json(d["exit_profile"]) if "exit_profile" in d else None
        return cal, _rule_of(d, cal), profile
    except ArgumentError as e:
        raise RunFolderError(f"{folder.calibration} is damaged ({e}): analyze the run again") from None


def read_calibration(run: str | Path) -> Calibration:
    """The run's calibration, refused if missing, malformed or made for other weights."""
    return _read(run)[0]


def read_exit_rule(run: str | Path) -> ExitRule:
    """The run's calibrated exit rule (thresholds, temperatures, fallback), refused as :func:`read_calibration`."""
    return _read(run)[1]


def read_exit_profile(run: str | Path) -> ExitProfile | None:
    """The validation split's exits under the run's calibrated rule (``None``: calibrated before
    profiles were kept; analyze again), refused as :func:`read_calibration`."""
    return _read(run)[2]


def engine_from_run(
    run: str | Path,
    threshold: float | None = None,
    fallback: str | None = None,
    device: torch.device | str = "cpu",
    module: torch.nn.Module | None = None,
) -> EarlyExitEngine:
    """The early-exit engine of a run, at its calibrated rule unless a max-softmax ``threshold`` is
    given (an explicit threshold keeps the calibrated fallback when there is one); it normalises
    uint8 images with the run's recorded statistics. A run of the user's own module is rebuilt
    around ``module`` (see :func:`~shallowdeep.runs.load`)."""
    folder = RunFolder(run)
    if folder.kind() != "sdn":
        raise RunFolderError(f"{run} is a plain CNN run: early exits need an SDN; make one from it by ic-only training")
    model = load(run, device, module=module)
    data = folder.meta().data
    assert isinstance(model, SDN)
    profile = None  # the validation split's exits: they describe the calibrated rule only
    if threshold is None:
        _, rule, profile = _read(run)  # one read of the file, one hash of the weights
        if fallback is not None and fallback != rule.fallback:
            rule, profile = replace(rule, fallback=fallback), None
    else:
        if fallback is None and folder.calibration.is_file():
            try:
                fallback = read_calibration(run).fallback
            except RunFolderError:
                pass  # no usable calibration: the default fallback
        rule = ExitRule(thresholds=(threshold,), fallback=fallback or "most_confident")
    try:
        return EarlyExitEngine(model, rule, device=device, mean=data.mean, std=data.std, profile=profile)
    except ArgumentError as e:
        raise RunFolderError(f"{folder.calibration} does not fit this model ({e}): analyze the run again") from None
