"""Run folders: the file names of a run, training into one, its records and its calibration."""

from .calibration import engine_from_run, read_calibration, read_exit_profile, read_exit_rule, save_calibration
from .folder import CALIBRATION, CHECKPOINT, RUN_JSON, WEIGHTS, RunFolder
from .meta import FORMAT, DataMeta, ModelMeta, RunConfig, RunMeta
from .records import backdoor_of, run_data, run_records
from .train import DEFAULT_SEED, TrainConfig, train_run
from .weights import build_from, load, load_weights, read_tensors, save_weights, tensors_to_bytes

__all__ = [
    "CALIBRATION",
    "CHECKPOINT",
    "DEFAULT_SEED",
    "FORMAT",
    "DataMeta",
    "ModelMeta",
    "RunConfig",
    "RunMeta",
    "RUN_JSON",
    "WEIGHTS",
    "RunFolder",
    "TrainConfig",
    "backdoor_of",
    "build_from",
    "engine_from_run",
    "load",
    "load_weights",
    "read_calibration",
    "read_exit_profile",
    "read_exit_rule",
    "read_tensors",
    "run_data",
    "run_records",
    "save_calibration",
    "save_weights",
    "tensors_to_bytes",
    "train_run",
]
