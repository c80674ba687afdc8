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
from ..core.io import check_safetensors_extent, lies_inside, read_json, sha256_file, write_bytes, write_json
from .meta import FORMAT, MetaError, RunMeta

RUN_JSON = "run.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.safetensors"
CALIBRATION = "calibration.json"
RECORDS = "records"
REPORT = "report"
EXPLAIN = "explain"


MAX_RUN_JSON = 64 << 20  # a run.json with every epoch of a long run is a few MB


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
        return self.exists() and self.meta().complete

    def meta(self) -> RunMeta:
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
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise RunFolderError(
                f"{self.run_json} is not a shallowdeep run (format "
                f"{meta.get('format') if isinstance(meta, dict) else None!r}): give "
                "the folder a training wrote"
            )
        try:
            return RunMeta.from_json(meta)
        except MetaError as e:
            raise RunFolderError(f"{self.run_json} is damaged ({e}): restore it or train the run again") from None

    def kind(self) -> str:
        """``"cnn"`` or ``"sdn"``."""
        return self.meta().model.kind

    def require_weights(self) -> Path:
        """The final weights, or an error saying how the run can get them."""
        if self.weights.is_file():
            return self.weights
        if self.meta().complete:
            raise RunFolderError(
                f"{self.path} finished training but its {WEIGHTS} is gone: restore the file or "
                "train the run again into a new folder"
            )
        raise RunFolderError(f"{self.path} has no {WEIGHTS}: training did not finish; continue it (`resume`)")

    def weights_sha256(self) -> str:
        """The final weights' SHA-256 (a file longer than its header declares is refused unhashed)."""
        weights = self.require_weights()
        check_safetensors_extent(weights)
        return sha256_file(weights)

    # ---------------------------------------------------------------------------------- writes
    def inside(self, target: Path) -> Path:
        """``target`` if it lies inside this run once links are resolved, else a :class:`RunFolderError`
        (a link named ``records`` or ``report`` must not send writes elsewhere)."""
        if not lies_inside(target, self.path):
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
