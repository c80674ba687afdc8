"""A data set as training sees it: uint8 splits in memory, a fixed validation split, channel statistics.

Every data set is decoded once into ``[N, H, W, 3]`` uint8 tensors (as airbench does) so that an
epoch is a handful of tensor operations rather than a worker pool decoding files.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..core.errors import ArgumentError
from .streamed import StreamSet

VAL_FRACTION = 0.1
VAL_SEED = 0  # fixed, independent of the training seed, so every run of a data set shares one split


@dataclass
class ImageSet:
    """One split: ``images`` uint8 ``[N, H, W, 3]``, ``labels`` int64 ``[N]``, ``ids`` int64 ``[N]``.

    ``ids`` are positions in the split the images came from (the official training or test set),
    so a record of the validation split can be traced back to its files.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.ids[index])

    def to(self, device: torch.device | str) -> ImageSet:
        """The same split with images and labels on ``device`` (ids stay on the CPU)."""
        return ImageSet(self.images.to(device), self.labels.to(device), self.ids)


@dataclass
class Dataset:
    """A data set ready to train on: train/val/test splits, class names, and its preprocessing."""

    name: str
    classes: list[str]
    train: ImageSet
    val: ImageSet
    test: ImageSet
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    flip: bool = True
    jitter: float = 0.0
    meta: dict = field(default_factory=dict)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def pad(self) -> int:
        """Random-crop padding: 4 px at 32 px, 8 at 64 px (the paper's), proportional elsewhere."""
        return max(1, self.image_size // 8)

    def to(self, device: torch.device | str) -> Dataset:
        """The data set resident on ``device`` as uint8: batches and their augmentation are then
        made there, with no copy from the host per step."""
        from dataclasses import replace

        return replace(self, train=self.train.to(device), val=self.val.to(device), test=self.test.to(device))

    def split(self, name: str) -> ImageSet:
        if name not in ("train", "val", "test"):
            raise ArgumentError(f"unknown split {name!r}: choose train, val or test")
        return getattr(self, name)


def carve_validation(
    train: ImageSet, fraction: float = VAL_FRACTION, seed: int = VAL_SEED
) -> tuple[ImageSet, ImageSet]:
    """Split a training set into (train, val) with a fixed seed; the test split is never touched."""
    n = len(train)
    n_val = max(1, int(round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    return train.subset(train_idx), train.subset(val_idx)


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    """Per-channel mean and (sample) std in [0, 1] of uint8 ``[N, H, W, 3]`` images."""
    # from each channel's histogram of the 256 values: a tenth of the time of a float64 copy of the
    # whole training set (1.1 GB for CIFAR), which every stage of a reproduction made again
    flat = images.reshape(-1, 3)
    n = flat.shape[0]
    values = torch.arange(256, dtype=torch.float64) / 255
    means, stds = [], []
    for c in range(3):
        counts = torch.bincount(flat[:, c], minlength=256).double()
        m = (counts * values).sum() / n
        means.append(float(m))
        stds.append(float(((counts * (values - m) ** 2).sum() / max(n - 1, 1)).sqrt()))
    return tuple(means), tuple(stds)  # type: ignore[return-value]


def finish(
    name: str,
    classes: list[str],
    train: ImageSet,
    test: ImageSet,
    image_size: int | None,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
    val: ImageSet | None = None,
    **kw: Any,
) -> Dataset:
    """The :class:`Dataset` a source has read: resized to ``image_size`` when given, validation carved
    from ``train`` unless the source has its own, channel statistics from ``train`` unless known;
    ``kw`` are the remaining :class:`Dataset` fields (``flip``, ``jitter``, ``meta``)."""
    if image_size is not None and image_size != train.images.shape[1]:
        train = ImageSet(resize(train.images, image_size), train.labels, train.ids)
        test = ImageSet(resize(test.images, image_size), test.labels, test.ids)
    if val is None:
        train, val = carve_validation(train)
    if mean is None or std is None:
        mean, std = train.channel_stats() if isinstance(train, StreamSet) else channel_stats(train.images)
    return Dataset(name, classes, train, val, test, tuple(mean), tuple(std), **kw)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 ``[N, H, W, 3]`` images to ``size`` x ``size``."""
    x = images.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def as_set(images: np.ndarray, labels: list[int] | np.ndarray) -> ImageSet:
    """Decoded images and their labels as a split (ids: positions in it)."""
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), labels_t, torch.arange(len(labels_t)))
