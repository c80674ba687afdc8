"""A run's INT8 export: its stages quantized, its exit thresholds re-calibrated on what they compute.

Quantization moves every IC's confidence, so thresholds calibrated in fp32 no longer keep their
promise. The quantized stages' outputs are collected on the validation and test splits (an exit
record of the deployed model: ``records/val.safetensors`` and ``records/test.safetensors`` in the
export), the run's rule is calibrated again on the validation one for the same goal (accuracy drop
or cost budget; one threshold or per IC, as the run chose), and the manifest keeps both rules.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np

from ..analysis.early_exit import Calibration
from ..analysis.record import ExitRecord
from ..analysis.rules import rule_calibration
from ..analysis.shift import validation_profile
from ..core.errors import ArgumentError
from ..core.exit_rule import ExitRule
from ..core.io import temp_folder
from ..inference.engine import EarlyExitEngine
from ..inference.export import ExportInfo, export_engine
from ..inference.quantize import finish_manifest, quantize_stages
from .calibration import read_calibration
from .records import run_data, run_records

CALIBRATION_IMAGES = 512


def _recalibrate(val: ExitRecord, test: ExitRecord, rule: ExitRule, fp32: Calibration) -> Calibration:
    """The rule's thresholds chosen again on the quantized validation record, for the fp32 goal."""
    goal = fp32.rule
    temps = np.asarray(rule.temperatures) if rule.temperature and rule.temperatures else None
    return rule_calibration(
        val,
        test,
        rule,
        temps,
        ensemble=rule.ensemble,
        max_drop=float(goal.get("max_drop", 0.01)),
        budget=float(goal["budget"]) if "budget" in goal else None,
        fallback=rule.fallback,
        per_ic=fp32.thresholds is not None,
    )


def quantized_export(run: str | Path, out: Path, engine: EarlyExitEngine, info: ExportInfo, opset: int) -> Path:
    """Export ``engine`` (the run's) with INT8 stages into the new folder ``out``, atomically."""
    fp32_cal = read_calibration(run)
    if "latency_budget_ms" in fp32_cal.rule:  # before any work
        raise ArgumentError(
            "this run's thresholds were chosen for a latency budget, which INT8 stages change: analyze it "
            "without `latency_budget` before exporting INT8, then profile the export"
        )
    data = run_data(run)
    records = run_records(run, ("val", "test"))
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    work = temp_folder(parent, f".{out.name}.")
    try:
        fp32 = export_engine(engine, work / "fp32", info, opset)
        staged = work / "int8"
        shutil.copytree(fp32, staged)
        images = {s: np.asarray(getattr(data, s).images) for s in ("val", "test")}
        quantize_stages(fp32, staged, images["val"][:CALIBRATION_IMAGES])
        quantized = _records(staged, images, records)
        cal = _recalibrate(quantized["val"], quantized["test"], engine.rule, fp32_cal)
        temps = list(engine.rule.temperatures) if engine.rule.temperature and engine.rule.temperatures else None
        rule = engine.rule.calibrated(cal.exit_thresholds, temps, engine.rule.fallback, engine.rule.ensemble)
        (staged / "records").mkdir()
        for split, rec in quantized.items():
            rec.save(staged / "records" / f"{split}.safetensors")
        summary = {
            "format": "QDQ: int8 weights per channel, uint8 activations (ONNX Runtime static quantization)",
            "calibration_images": int(min(CALIBRATION_IMAGES, len(images["val"]))),
            "calibration_split": "val",
            "fp32": {"val": asdict(fp32_cal.val), "test": asdict(fp32_cal.test) if fp32_cal.test else None},
            "int8": {"val": asdict(cal.val), "test": asdict(cal.test) if cal.test else None},
        }
        finish_manifest(staged, rule, engine.rule, validation_profile(quantized["val"], rule).to_json(), summary)
        if out.exists():
            out.rmdir()  # empty (checked by the caller)
        os.replace(staged, out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def _records(export: Path, images: dict[str, np.ndarray], fp32: dict[str, ExitRecord]) -> dict[str, ExitRecord]:
    """The quantized stages' outputs on each split, as exit records beside the fp32 ones (same
    inputs, labels, ids and FLOP costs)."""
    from ..inference import deploy

    model = deploy.load(export)
    out = {}
    for split, x in images.items():
        ref = fp32[split]
        if len(x) != ref.num_inputs:
            raise ArgumentError(f"the run's {split} split and its record differ in size: analyze the run again")
        meta = dict(ref.meta) | {"split_name": split, "quantized": "int8"}
        out[split] = ExitRecord.from_arrays(model.outputs(x), ref.labels, ref.costs, ref.cnn_cost, ref.ids, meta)
    return out
