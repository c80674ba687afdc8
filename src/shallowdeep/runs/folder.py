"""The run folder: the one place that knows the names of a run's files.

``run.json`` (architecture, data set, recipe, seed, per-epoch metrics, status),
``model.safetensors`` once training has finished, ``checkpoint.safetensors`` while it runs,
``calibration.json`` (the engine's threshold, written by the analysis), ``records/`` (cached exit
records), ``report/`` and ``explain/``. Writes are atomic and never follow a link out of the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import RunFolderError
from ..core.io import read_json, sha256_file, write_bytes, write_json

FORMAT = "shallowdeep-run/1"
RUN_JSON = "run.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CALIBRATION = "calibration.json"
RECORDS = "records"
REPORT = "report"
EXPLAIN = "explain"


MAX_RUN_JSON = 64 << 20  # a run.json with every epoch of a long run is a few MB
MAX_CLASSES = 100_000
SIZES = (8, 1024)


def check_meta(meta: dict[str, Any]) -> str | None:
    """What is wrong with a ``run.json`` (types and bounds of what the tool uses), or ``None``.

    Bounded sizes keep a crafted file from making the tool allocate without limit."""

    def is_int(v: Any, lo: int, hi: int) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi

    model, cfg, data = meta.get("model"), meta.get("config"), meta.get("data")
    if not isinstance(model, dict):
        return "no model description"
    if model.get("kind") not in ("cnn", "sdn") or not isinstance(model.get("arch"), str):
        return "model kind or architecture missing"
    if not is_int(model.get("num_classes"), 1, MAX_CLASSES):
        return f"num_classes {model.get('num_classes')!r} is not an integer in 1..{MAX_CLASSES}"
    if not is_int(model.get("image_size"), *SIZES):
        return f"image_size {model.get('image_size')!r} is not an integer in {SIZES[0]}..{SIZES[1]}"
    pos = model.get("ic_positions")
    if not isinstance(pos, list) or not all(is_int(p, 0, 10_000) for p in pos):
        return "ic_positions is not a list of block indices"
    if not isinstance(cfg, dict) or not all(isinstance(cfg.get(k), str) for k in ("mode", "arch", "data")):
        return "the configuration (mode, arch, data) is missing"
    if not isinstance(meta.get("recipe"), dict):
        return "the recipe is missing"
    if not isinstance(data, dict):
        return "the data description is missing"
    for key in ("mean", "std"):
        v = data.get(key)
        if not (isinstance(v, list) and len(v) == 3 and all(isinstance(x, (int, float)) for x in v)):
            return f"data {key} is not three numbers"
    if any(x <= 0 for x in data["std"]):
        return "data std has a value <= 0"
    classes = data.get("class_names", data.get("classes"))
    if not isinstance(classes, list) or len(classes) != model["num_classes"]:
        return (
            f"the data set names {len(classes) if isinstance(classes, list) else 'no'} classes for a model of "
            f"{model['num_classes']}"
        )
    if not isinstance(meta.get("epochs", []), list):
        return "the epoch history is not a list"
    return None


def recorded_normalisation(meta: dict) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The per-channel mean and std a run's model was trained with (``run.json``'s data section), or
    ``None`` when it records none."""
    d = meta.get("data", {}) if isinstance(meta, dict) else {}
    mean, std = d.get("mean"), d.get("std")
    if isinstance(mean, list) and isinstance(std, list) and len(mean) == len(std) == 3:
        return tuple(float(v) for v in mean), tuple(float(v) for v in std)
    return None


class RunFolder:
    """A run folder at ``path`` (which may not exist yet)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    # ---------------------------------------------------------------------------------- names
    @property
    def run_json(self) -> Path:
        return self.path / RUN_JSON

    @property
    def weights(self) -> Path:
        return self.path / WEIGHTS

    @property
    def checkpoint(self) -> Path:
        return self.path / CHECKPOINT

    @property
    def calibration(self) -> Path:
        return self.path / CALIBRATION

    @property
    def records(self) -> Path:
        return self.path / RECORDS

    def record(self, split: str) -> Path:
        """The cached exit record of ``split``."""
        return self.records / f"{split}.safetensors"

    @property
    def report(self) -> Path:
        return self.path / REPORT

    @property
    def explain(self) -> Path:
        return self.path / EXPLAIN

    # ---------------------------------------------------------------------------------- state
    def exists(self) -> bool:
        """Whether the folder holds a run (its ``run.json``)."""
        return self.run_json.is_file()

    def finished(self) -> bool:
        """Whether the folder holds a run that finished training."""
        return self.exists() and self.meta().get("status") == "complete"

    def meta(self) -> dict[str, Any]:
        """``run.json``, checked to be a shallowdeep run."""
        if self.path.exists() and not self.path.is_dir():
            raise RunFolderError(f"{self.path} is a file, not a run folder: give the folder a training wrote")
        if not self.path.is_dir():
            raise RunFolderError(
                f"{self.path} is not a run folder (no such directory): give the folder a training wrote"
            )
        if not self.run_json.is_file():
            raise RunFolderError(
                f"{self.path} is not a run folder (it has no {RUN_JSON}): give the folder a training wrote"
            )
        if self.run_json.stat().st_size > MAX_RUN_JSON:
            raise RunFolderError(
                f"{self.run_json} is {self.run_json.stat().st_size} bytes, far more than a run's "
                "description: it is not a shallowdeep run.json; restore it"
            )
        meta = read_json(self.run_json)
        if meta.get("format") != FORMAT:
            raise RunFolderError(
                f"{self.run_json} is not a shallowdeep run (format {meta.get('format')!r}): give "
                "the folder a training wrote"
            )
        problem = check_meta(meta)
        if problem:
            raise RunFolderError(f"{self.run_json} is damaged ({problem}): restore it or train the run again")
        return meta

    def kind(self) -> str:
        """``"cnn"`` or ``"sdn"``."""
        return str(self.meta().get("model", {}).get("kind"))

    def require_weights(self) -> Path:
        """The final weights, or an error saying how the run can get them."""
        if self.weights.is_file():
            return self.weights
        status = self.meta().get("status")
        if status == "complete":
            raise RunFolderError(
                f"{self.path} finished training but its {WEIGHTS} is gone: restore the file or "
                "train the run again into a new folder"
            )
        raise RunFolderError(f"{self.path} has no {WEIGHTS}: training did not finish; continue it (`resume`)")

    def weights_sha256(self) -> str:
        return sha256_file(self.require_weights())

    # ---------------------------------------------------------------------------------- writes
    def inside(self, target: Path) -> Path:
        """``target`` if it lies inside this run once links are resolved, else a :class:`RunFolderError`
        (a link named ``records`` or ``report`` must not send writes elsewhere)."""
        root = self.path.resolve()
        resolved = target.resolve()
        if resolved != root and root not in resolved.parents:
            raise RunFolderError(
                f"{target} leads outside the run folder {self.path} (a symbolic link?): remove the link"
            )
        return target

    def subfolder(self, path: Path) -> Path:
        """Create (if needed) a folder of this run and return it, refusing links out of the run."""
        if path.exists() and not path.is_dir():
            raise RunFolderError(f"{path} exists and is not a folder: remove it")
        self.inside(path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def write_json(self, path: Path, obj: Any) -> None:
        write_json(self.inside(path), obj)

    def write_bytes(self, path: Path, data: bytes) -> None:
        write_bytes(self.inside(path), data)
