"""INT8 stages: ONNX Runtime's static quantization of an export, stage by stage.

Each stage's graph is quantized with :func:`onnxruntime.quantization.quantize_static` (QDQ format,
signed 8-bit weights per output channel, unsigned 8-bit activations, MinMax calibration), its
calibration inputs being that stage's own inputs: the calibration images through the fp32 stages
before it. The quantized graphs keep the fp32 graphs' inputs and outputs, so the runtime runs them
unchanged. Quantization moves every IC's confidence, so the thresholds are re-calibrated on the
quantized stages' outputs by the caller (:func:`shallowdeep.workflows.export_run`), and the
manifest keeps both rules (:func:`finish_manifest`).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from ..core.errors import ArgumentError
from ..core.exit_rule import ExitRule
from ..core.io import JSONObject, write_json
from .export import MANIFEST, sha256_bytes

QUANTIZATIONS = ("int8",)


class _Reader:
    """onnxruntime's calibration data reader over one stage's inputs, a batch at a time."""

    def __init__(self, inputs: np.ndarray, batch: int = 32) -> None:
        self._batches = iter([{"x": inputs[i : i + batch]} for i in range(0, len(inputs), batch)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._batches, None)


def _stage_inputs(folder: Path, x: np.ndarray) -> list[np.ndarray]:
    """Each fp32 stage's input for the calibration images ``x`` (normalised NCHW float32)."""
    from . import deploy

    model = deploy.load(folder)
    inputs, h = [], x
    for k, sess in enumerate(model.sessions):
        inputs.append(h)
        if k < len(model.sessions) - 1:
            h = np.concatenate([model._run(k, sess, h[i : i + 256])[0] for i in range(0, len(h), 256)])
    return inputs


def quantize_stages(fp32: Path, out: Path, images: np.ndarray) -> None:
    """Write the INT8 graph of every stage of the export ``fp32`` into the existing folder ``out``
    (same file names), calibrated on ``images`` (uint8 ``[N, H, W, 3]``, the validation split's),
    and the manifest with the new hashes; an operator ONNX Runtime cannot quantize is one line."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from . import deploy

    manifest = json.loads((fp32 / MANIFEST).read_text())
    x = deploy.load(fp32).preprocess(images)
    for k, (stage, inputs) in enumerate(zip(manifest["stages"], _stage_inputs(fp32, x))):
        src, dst = fp32 / stage["file"], out / stage["file"]
        try:
            with tempfile.TemporaryDirectory(prefix="shallowdeep-int8-") as tmp:
                prepared = Path(tmp) / "prepared.onnx"
                quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
                quantize_static(
                    str(prepared),
                    str(dst),
                    _Reader(inputs),
                    quant_format=QuantFormat.QDQ,
                    per_channel=True,
                    activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8,
                )
        except Exception as e:  # onnxruntime's errors name the operator it cannot quantize
            first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ArgumentError(
                f"stage {k} cannot be quantized to INT8 by ONNX Runtime ({first}): export it without `quantize`"
            ) from None
        stage["sha256"] = sha256_bytes(dst.read_bytes())
    write_json(out / MANIFEST, manifest)


def finish_manifest(out: Path, rule: ExitRule, fp32_rule: ExitRule, profile_json: JSONObject, info: JSONObject) -> None:
    """The INT8 export's manifest: ``exit`` the rule re-calibrated on the quantized stages (what the
    runtime runs), ``exit_fp32`` the rule calibrated in fp32, the drift monitor's profile of the
    quantized stages, and ``quantization`` (how, on what, and both rules' validation figures)."""
    manifest = json.loads((out / MANIFEST).read_text())
    manifest |= {"exit": rule.to_json(), "exit_fp32": fp32_rule.to_json(), "drift": profile_json}
    manifest["quantization"] = info
    write_json(out / MANIFEST, manifest)
