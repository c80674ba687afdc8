"""shallowdeep: Shallow-Deep Networks (Kaya, Hong, Dumitras, ICML 2019) as a library and a tool.

The public API below is imported lazily (on first use), so ``import shallowdeep`` and the
command line's ``--help`` stay fast; ``from shallowdeep import X`` works as usual.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

try:  # one source for the version: the package metadata (pyproject.toml)
    __version__ = version("shallowdeep")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

# public name -> module that defines it
_API = {
    # models
    "CNN": "models",
    "SDN": "models.sdn",
    "build_cnn": "models",
    "build_sdn": "models.sdn",
    "to_sdn": "models.convert",
    "list_archs": "models",
    "output_costs": "models.costs",
    "Costs": "models.costs",
    # data
    "Dataset": "data",
    "ImageSet": "data",
    "load_dataset": "data",
    "list_datasets": "data",
    # training and run folders
    "Recipe": "training",
    "Runtime": "training",
    "fit": "training",
    "TrainConfig": "runs",
    "train_run": "runs",
    "RunFolder": "runs",
    "load": "runs",
    "save_weights": "runs",
    # records and analyses
    "ExitRecord": "analysis",
    "collect": "inference.collect",
    "run_records": "runs",
    "analyze": "analysis",
    "overthinking": "analysis",
    "early_exit": "analysis",
    "sweep": "analysis",
    "calibrate": "analysis",
    "confusion": "analysis",
    # inference
    "EarlyExitEngine": "inference.engine",
    "engine_from_run": "runs",
    "analyze_run": "workflows",
    "export_run": "workflows",
    "profile_run": "runs.latency",
    "write_latency": "runs.latency",
    "LatencyProfile": "core.latency",
    # errors
    "UserError": "core.errors",
}

__all__ = sorted(_API) + ["__version__", "deploy"]


# public module -> where it lives: ``from shallowdeep import deploy`` loads the torch-free runtime only
_MODULES = {"deploy": "inference.deploy"}


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        module = importlib.import_module(f".{_MODULES[name]}", __name__)
        globals()[name] = module
        return module
    if name in _API:
        value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'shallowdeep' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:  # for type checkers and IDEs
    from .analysis import ExitRecord, analyze, calibrate, confusion, early_exit, overthinking, sweep
    from .core.errors import UserError
    from .data import Dataset, ImageSet, list_datasets, load_dataset
    from .inference.collect import collect
    from .inference.engine import EarlyExitEngine
    from .models import CNN, build_cnn, list_archs
    from .models.convert import to_sdn
    from .models.costs import Costs, output_costs
    from .models.sdn import SDN, build_sdn
    from .runs import RunFolder, TrainConfig, engine_from_run, load, run_records, save_weights, train_run
    from .training import Recipe, Runtime, fit
    from .workflows import analyze_run, export_run
