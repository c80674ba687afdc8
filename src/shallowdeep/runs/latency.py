"""A run's measured stage latency: ``RUN/latency.json``, made by ``profile`` and read by a latency budget.

Profiled on the run's validation images (the test split chooses nothing, and latency should be
measured on inputs like the deployed ones), with the torch engine or with onnxruntime on the run's
staged export (made into a temporary folder). An export folder is profiled in onnxruntime alone,
on images the caller gives or on seeded random ones (a CNN's time does not depend on its pixels).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

from ..compute.devices import pick_device
from ..core.errors import ArgumentError, RunFolderError, UserError
from ..core.io import read_json, write_json
from ..core.latency import FILE, LatencyProfile
from .calibration import engine_from_run
from .folder import RunFolder
from .records import run_data

MAX_LATENCY_JSON = 4 << 20
RUNTIMES = ("torch", "onnx")


def _validation_images(run: str | Path, n: int) -> torch.Tensor:
    """Up to ``n`` of the run's validation images, uint8 ``[n, H, W, 3]``."""
    images = run_data(run).val.images
    if isinstance(images, torch.Tensor):
        return images[:n]
    return torch.from_numpy(np.stack([np.asarray(images[i]) for i in range(min(n, len(images)))]))


def _check(runtime: str, batch: int, repeats: int) -> None:
    if runtime not in RUNTIMES:
        raise ArgumentError(f"`runtime` is torch or onnx, not {runtime!r}")
    if not 1 <= batch <= 4096:
        raise ArgumentError(f"`batch` must lie in 1..4096, got {batch}")
    if not 1 <= repeats <= 100_000:
        raise ArgumentError(f"`repeats` must lie in 1..100000, got {repeats}")


def profile_run(
    run: str | Path, runtime: str = "torch", device: str = "cpu", batch: int = 1, repeats: int = 50
) -> LatencyProfile:
    """The stage latency of a calibrated SDN run on this machine (see the module docstring)."""
    _check(runtime, batch, repeats)
    dev = pick_device(device)
    engine = engine_from_run(run, device=dev)
    images = _validation_images(run, max(batch, 64) if batch == 1 else 4 * batch)
    if len(images) < batch:
        raise ArgumentError(f"the run's validation split has {len(images)} images, fewer than a `batch` of {batch}")
    if runtime == "torch":
        from ..inference.latency import profile_engine

        return profile_engine(engine, images, batch, repeats)
    from ..inference.export import ExportInfo, export_engine

    meta = RunFolder(run).meta().data
    with tempfile.TemporaryDirectory(prefix="shallowdeep-profile-") as tmp:
        out = export_engine(engine, Path(tmp) / "export", ExportInfo(meta.mean, meta.std))
        return _deployment(out, dev).profile(images.numpy(), batch, repeats)


def profile_export(
    export: str | Path, device: str = "cpu", batch: int = 1, repeats: int = 50, seed: int = 0
) -> LatencyProfile:
    """The stage latency of an export in onnxruntime, on seeded random images of its input size."""
    _check("onnx", batch, repeats)
    model = _deployment(Path(export), pick_device(device))
    n = max(batch, 64) if batch == 1 else 4 * batch
    images = np.random.default_rng(seed).integers(0, 256, (n, model.size, model.size, 3), dtype=np.uint8)
    return model.profile(images, batch, repeats)


def _deployment(folder: Path, device: torch.device):
    from ..inference import deploy

    return deploy.load_for(folder, device.type)


def check_latency_out(path: str | Path) -> Path:
    """Where a profile goes, checked before anything is measured: a ``.json`` file in a folder that exists."""
    path = Path(path)
    if path.suffix != ".json":
        raise ArgumentError(f"`out` {path} should be a .json file")
    if path.is_dir() or not path.parent.is_dir():
        raise ArgumentError(f"`out` {path} is a folder or lies in a folder that does not exist: choose a file")
    return path


def write_latency(profile: LatencyProfile, path: str | Path) -> Path:
    """Write the profile atomically."""
    write_json(path, profile.to_json())
    return Path(path)


def latency_file(target: str | Path) -> Path:
    """The profile a run or an export keeps: ``latency.json`` inside it."""
    return Path(target) / FILE


def read_latency(path: str | Path, run: str | Path | None = None) -> LatencyProfile:
    """A latency profile, checked; with ``run``, refused unless it profiles that run's network."""
    path = Path(path)
    if not path.is_file():
        where = f" (profile {run} first)" if run is not None else ""
        raise RunFolderError(f"{path} does not exist{where}")
    if path.stat().st_size > MAX_LATENCY_JSON:
        raise RunFolderError(f"{path} is {path.stat().st_size} bytes, far more than a latency profile: profile again")
    try:
        profile = LatencyProfile.from_json(read_json(path))
    except UserError as e:
        raise RunFolderError(f"{path} is not a usable latency profile ({e}): profile the run again") from None
    if run is not None:
        arch = RunFolder(run).meta().model.arch
        if profile.arch != arch:
            raise RunFolderError(f"{path} profiles a {profile.arch}, not this run's {arch}: profile the run")
    return profile
