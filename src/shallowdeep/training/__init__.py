"""Training: the paper's modes and recipes plugged into one plain loop, with speed as a runtime around it."""

from .loop import EpochResult, epoch_seed, evaluate, fit, train_one_epoch
from .modes import IC_CAPS, MODES, CNNMode, ICOnlyMode, MixedMode, Mode, Objective, SDNMode, make_mode, mode_of
from .recipe import OPTIMIZERS, WEIGHT_DECAY, Recipe, default_recipe, make_optimizer, make_schedule
from .runtime import COMPILE_PAYBACK_STEPS, PRECISIONS, Runtime, pick_device

__all__ = [
    "COMPILE_PAYBACK_STEPS",
    "IC_CAPS",
    "MODES",
    "OPTIMIZERS",
    "PRECISIONS",
    "WEIGHT_DECAY",
    "CNNMode",
    "EpochResult",
    "ICOnlyMode",
    "Mode",
    "Objective",
    "Recipe",
    "Runtime",
    "SDNMode",
    "default_recipe",
    "epoch_seed",
    "evaluate",
    "fit",
    "make_mode",
    "mode_of",
    "MixedMode",
    "make_optimizer",
    "make_schedule",
    "pick_device",
    "train_one_epoch",
]
