"""Data: named data sets held in memory as uint8 tensors (or streamed from large folders), a fixed
validation split, batched augmentation, and backdoor poisoning.

One module per job: :mod:`.sets` (the split and data set types), :mod:`.registry` (names and
loading), :mod:`.sources` (CIFAR, image folders, Tiny ImageNet, digits), :mod:`.decode` (image files
to arrays), :mod:`.augmentation`, :mod:`.batching`, :mod:`.streamed` and :mod:`.poison`. The names
below are the layer's public face; importing the package registers every source.
"""

from __future__ import annotations

from ..core.images import image_paths
from . import sources as _sources  # noqa: F401  (registers the data sets)
from .augmentation import augment, normalize
from .batching import Batches, batches
from .decode import read_image
from .registry import (
    dataset_shape,
    default_root,
    list_datasets,
    load_dataset,
    parse_data_name,
    register_dataset,
    reuse_loaded,
)
from .sets import Dataset, ImageSet, carve_validation, channel_stats, resize
from .streamed import StreamSet

__all__ = [
    "Batches",
    "Dataset",
    "ImageSet",
    "StreamSet",
    "augment",
    "batches",
    "carve_validation",
    "channel_stats",
    "dataset_shape",
    "default_root",
    "image_paths",
    "list_datasets",
    "load_dataset",
    "normalize",
    "parse_data_name",
    "read_image",
    "register_dataset",
    "resize",
    "reuse_loaded",
]
