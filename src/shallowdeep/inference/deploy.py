"""Early exits outside PyTorch: the torch-free runtime of an export, the ``shallowdeep-deploy``
distribution's (``shallowdeep_deploy.runtime``; one implementation, which the main package depends
on). ``deploy.load(EXPORT).classify(images)``: see that module."""

from pathlib import Path

from shallowdeep_deploy.drift import DriftMonitor
from shallowdeep_deploy.runtime import Classified, Deployment, Exits, ExportError, Manifest, Pending, StageFile, load

__all__ = [
    "Classified",
    "Deployment",
    "DriftMonitor",
    "Exits",
    "ExportError",
    "Manifest",
    "Pending",
    "StageFile",
    "load",
    "load_for",
]


def load_for(folder: str | Path, device_type: str) -> Deployment:
    """An export loaded for a torch device type: ``cpu`` runs onnxruntime's CPU provider, any other
    (``cuda``) its CUDA provider first, the CPU's for what CUDA lacks."""
    providers = ["CPUExecutionProvider"] if device_type == "cpu" else ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return load(folder, providers=providers)
