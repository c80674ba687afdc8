"""Unfamiliar inputs: images from another distribution than a run's data, for the out-of-distribution
analysis (a named data set's test split, or every image in a folder)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from ..core.errors import ArgumentError
from ..core.images import image_paths
from .decode import decode_cached
from .registry import load_dataset, parse_data_name
from .sets import ImageSet, as_set

MAX_INPUTS = 100_000  # an OOD set larger than this is refused before decoding (a typo'd root folder)


def unfamiliar_key(spec: str) -> str:
    """A file-name-safe key of an OOD source (its spec's hash: a path may hold any character)."""
    return "ood-" + hashlib.sha256(spec.encode()).hexdigest()[:12]


def check_unfamiliar(spec: str) -> list[Path] | None:
    """An OOD source checked before anything is collected: a folder's image files (at most
    :data:`MAX_INPUTS`), or ``None`` for a data set name that parses."""
    if not isinstance(spec, str) or not spec.strip():
        raise ArgumentError("`ood` names a data set or a folder of images, got nothing")
    folder = Path(spec).expanduser()
    if folder.is_dir():
        paths = image_paths([folder])
        if len(paths) > MAX_INPUTS:
            raise ArgumentError(f"`ood` folder {folder} holds {len(paths):,} images, over {MAX_INPUTS:,}: use fewer")
        return paths
    try:
        parse_data_name(spec)
    except ArgumentError:
        raise ArgumentError(
            f"`ood` {spec!r} is neither a folder of images nor a data set name (digits, imagefolder:PATH, …)"
        ) from None
    return None


def load_unfamiliar(spec: str, image_size: int, root: str | Path | None = None) -> ImageSet:
    """The images of ``spec`` at ``image_size`` px: a registered data set name (``digits``,
    ``imagefolder:PATH``, …: its test split, never downloaded) or a folder (every image in it,
    recursively). Labels are all 0: unfamiliar inputs have no class of the run's."""
    paths = check_unfamiliar(spec)
    if paths is not None:
        images = decode_cached(paths, image_size)
    else:
        images = load_dataset(spec, root, image_size, download=False).test.images.numpy()
    return as_set(images, np.zeros(len(images), np.int64))
