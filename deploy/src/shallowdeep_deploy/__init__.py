"""shallowdeep-deploy: run a shallowdeep export's early exits with onnxruntime and numpy, no torch.

    import shallowdeep_deploy
    model = shallowdeep_deploy.load("exported/")
    result = model.classify(images_or_paths)

The command line: ``shallowdeep-deploy classify EXPORT IMAGE_OR_FOLDER...``. Names load on first use:
importing ``shallowdeep_deploy.names`` (what ``shallowdeep --help`` needs) imports no numpy.
"""

from __future__ import annotations

from typing import Any

_LAZY = {
    "load": "runtime",
    "Deployment": "runtime",
    "Classified": "runtime",
    "Pending": "runtime",
    "Exits": "runtime",
    "ExportError": "runtime",
    "UserError": "errors",
    "DriftMonitor": "drift",
    "ExitProfile": "drift",
}
__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'shallowdeep_deploy' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
