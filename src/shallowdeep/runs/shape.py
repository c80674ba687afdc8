"""The classes and image size a training will have: one resolution for ``train`` and ``info``.

``train`` decodes its images at :func:`decode_size` and builds its model for the data set it loaded;
``info`` asks :func:`planned_shape`, which loads the same data set the same way (image folders
streamed: listed, one image decoded, the same classes and size) and says where each number came
from. Without the files (offline, not downloaded yet) it falls back to the data set's definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..core.errors import DataError
from ..data import dataset_shape, load_dataset, parse_data_name
from ..models.zoo import default_input_size, is_zoo_name


def decode_size(arch: str | None, image_size: int | None, data_mode: str | None) -> int | None:
    """The size images are decoded at: asked, else (streamed data for a zoo model) the zoo's input
    size, else ``None``: the data set's own."""
    if image_size is not None or arch is None or not is_zoo_name(arch) or data_mode != "stream":
        return image_size
    return default_input_size(arch)


@dataclass(frozen=True)
class PlannedShape:
    """What a training of an architecture on a data set gets, and where each number comes from."""

    num_classes: int
    image_size: int
    classes_from: str
    size_from: str


def planned_shape(
    arch: str | None,
    data: str,
    data_root: str | Path | None = None,
    image_size: int | None = None,
    data_mode: str | None = None,
) -> PlannedShape:
    """The classes and image size ``train`` will use for ``arch`` on ``data`` with these options."""
    size = decode_size(arch, image_size, data_mode)
    name, _ = parse_data_name(data)
    if image_size is not None:
        size_from = "`image_size`"
    elif size is not None:
        size_from = f"{arch}'s input size (streamed data)"
    else:
        size_from = "the data's images"
    try:
        # a folder streamed lists its files and decodes one image: the shape of what memory would hold
        loaded = load_dataset(data, data_root, size, download=False, mode="stream" if name == "imagefolder" else None)
    except DataError:
        known = dataset_shape(data)
        if known is None:  # a folder that is not there: the same error train gives
            raise
        classes, own = known
        where = "the data set's definition (its files are not here yet)"
        return PlannedShape(classes, size or own, where, size_from if size else where)
    return PlannedShape(loaded.num_classes, loaded.image_size, f"the files of {data}", size_from)
