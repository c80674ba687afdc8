"""Early exits outside PyTorch: run an export (``shallowdeep export``) with onnxruntime and numpy only.

    from shallowdeep.inference import deploy
    model = deploy.load("exported/")                # checks every graph against the manifest's hashes
    result = model.classify(images)                 # uint8 RGB [N, H, W, 3] (or image paths)
    result.predictions, result.exits, result.confidence, result.classes

Importing this module imports no torch (tested), so a deployment needs ``pip install
'shallowdeep[deploy]'`` (onnxruntime, numpy, pillow for paths) and nothing else. Inputs run stage by
stage; after each IC the inputs that exit leave the batch (compaction), the rest go on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import DataError, MissingExtraError, RunFolderError, UserError
from ..core.exit_rule import ExitRule, exit_scores, softmax
from ..core.images import fit_image, open_rgb
from ..core.io import JSONObject

FORMAT = "shallowdeep-export/2"
FORMAT_1 = "shallowdeep-export/1"  # the exit entry before ExitRule; still loads


class ExportError(RunFolderError):
    """A folder that is not a usable export."""


@dataclass
class Classified:
    """Per input: ``predictions`` (class index), ``exits`` (output index; the last = no IC exit),
    ``confidence`` (max softmax of the output that answered); ``classes`` names the predictions."""

    predictions: np.ndarray
    exits: np.ndarray
    confidence: np.ndarray
    classes: list[str]

    def labels(self) -> list[str]:
        return [self.classes[i] for i in self.predictions]


class Deployment:
    """An export loaded into onnxruntime sessions (see the module docstring)."""

    def __init__(self, folder: Path, manifest: JSONObject, sessions: list[Any]) -> None:
        self.folder, self.manifest, self.sessions = folder, manifest, sessions
        inp = manifest["input"]
        self.size = int(inp["size"])
        self.mean = np.asarray(inp["mean"], np.float32).reshape(1, 1, 1, 3)
        self.std = np.asarray(inp["std"], np.float32).reshape(1, 1, 1, 3)
        self.classes = list(manifest["classes"])
        self.rule = _exit_rule(manifest)
        self.thresholds = self.rule.per_ic(len(sessions) - 1)
        self.temperatures = self.rule.scales(len(sessions))
        self.relative_costs = np.asarray(manifest["relative_costs"], np.float64)

    @property
    def num_outputs(self) -> int:
        return len(self.sessions)

    def preprocess(self, images: np.ndarray | Sequence[str | Path]) -> np.ndarray:
        """uint8 RGB ``[N, H, W, 3]`` (or image paths) -> normalised float32 ``[N, 3, S, S]``."""
        if not isinstance(images, np.ndarray):
            images = (
                np.stack([_read(p, self.size) for p in images])
                if len(images)
                else np.zeros((0, self.size, self.size, 3), np.uint8)
            )
        if images.ndim != 4 or images.shape[1:] != (self.size, self.size, 3) or images.dtype != np.uint8:
            raise DataError(
                f"images must be uint8 RGB shaped [N, {self.size}, {self.size}, 3], got "
                f"{images.dtype} {list(images.shape)}: resize them to {self.size}x{self.size}"
            )
        x = (images.astype(np.float32) / 255.0 - self.mean) / self.std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))

    def classify(self, images: np.ndarray | Sequence[str | Path]) -> Classified:
        """Classify a batch with real exits: each input stops at the first IC its rule lets out."""
        x = self.preprocess(images)
        n, last = x.shape[0], self.num_outputs - 1
        preds = np.zeros(n, np.int64)
        exits = np.full(n, last, np.int64)
        confs = np.zeros(n, np.float64)
        active = np.arange(n)
        best_conf = np.full(n, -1.0)
        best_pred = np.zeros(n, np.int64)
        prev = np.full(n, -1, np.int64)
        run = np.zeros(n)
        h = x
        for k, sess in enumerate(self.sessions):
            if not len(active):
                break
            outs = sess.run(None, {"x": h})
            p = softmax(outs[-1] / self.temperatures[k])
            conf, pred = p.max(1), p.argmax(1)
            if k == last:
                if self.rule.fallback == "most_confident":
                    use = best_conf >= conf
                    pred, conf = np.where(use, best_pred, pred), np.where(use, best_conf, conf)
                preds[active], confs[active] = pred, conf
                break
            score, run = exit_scores(self.rule, p, pred, last, prev, run)
            prev = pred
            out = score >= self.thresholds[k]
            better = conf > best_conf
            best_conf, best_pred = np.where(better, conf, best_conf), np.where(better, pred, best_pred)
            idx = active[out]
            preds[idx], exits[idx], confs[idx] = pred[out], k, conf[out]
            keep = ~out
            h = np.ascontiguousarray(outs[0][keep])
            active, best_conf, best_pred = active[keep], best_conf[keep], best_pred[keep]
            prev, run = prev[keep], run[keep]
        return Classified(preds, exits, confs, self.classes)


def _exit_rule(manifest: JSONObject) -> ExitRule:
    """The manifest's exit rule; an export of format 1 spelled it ``rule``/``patience``."""
    ex = manifest["exit"]
    if manifest.get("format") == FORMAT_1 and isinstance(ex, dict):
        ex = {
            "name": ex.get("rule"),
            "k": ex.get("patience", 0),
            "thresholds": ex.get("thresholds"),
            "temperatures": ex.get("temperatures"),
            "fallback": ex.get("fallback", "most_confident"),
        }
    return ExitRule.from_json(ex)


def _read(path: str | Path, size: int) -> np.ndarray:
    return np.asarray(fit_image(open_rgb(path), size), np.uint8)


def load(folder: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> Deployment:
    """Load an export; every graph's hash must match the manifest. ``providers``: onnxruntime's
    execution providers (default: CPU); ``threads``: intra-op threads per session (default:
    onnxruntime's, one per core; 1 is often faster at batch 1, where the stages' pools compete)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingExtraError("deployment needs onnxruntime: pip install 'shallowdeep[deploy]'", "deploy") from None
    folder = Path(folder)
    mpath = folder / "manifest.json"
    if not mpath.is_file():
        raise ExportError(
            f"{folder} is not an export (no manifest.json): export a calibrated run first (shallowdeep export)"
        )
    try:
        manifest = json.loads(mpath.read_text())
        if manifest.get("format") not in (FORMAT, FORMAT_1):
            raise ValueError(f"format {manifest.get('format')!r}, not {FORMAT}")
        stages = manifest["stages"]
        for key in ("input", "exit", "classes", "relative_costs"):
            manifest[key]  # noqa: B018  (present)
    except (ValueError, KeyError, TypeError) as e:
        raise ExportError(f"{mpath} is damaged ({e}): export the run again") from None
    sessions = []
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    for st in stages:
        path = folder / str(st["file"])
        if path.name != st["file"] or not path.is_file():
            raise ExportError(f"{folder} lacks {st['file']} named by its manifest: export the run again")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != st.get("sha256"):
            raise ExportError(
                f"{path} does not match the manifest's hash (changed or from another export): export the run again"
            )
        sessions.append(ort.InferenceSession(data, opts, providers=list(providers or ["CPUExecutionProvider"])))
    try:
        return Deployment(folder, manifest, sessions)
    except (UserError, KeyError, TypeError, ValueError) as e:
        raise ExportError(f"{mpath} is damaged ({e}): export the run again") from None
