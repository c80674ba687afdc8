"""The named data sets: registration, name parsing, and loading one by name (reused inside a pipeline)."""

from __future__ import annotations

import contextlib
import contextvars
import os
from collections.abc import Callable, Iterator
from pathlib import Path

from ..core.errors import ArgumentError
from .decode import MAX_SIZE, MIN_SIZE
from .sets import Dataset

Loader = Callable[[Path | None, str | None, int | None], Dataset]
_DATASETS: dict[str, Loader] = {}
_DOCS: dict[str, str] = {}
_SHAPES: dict[str, tuple[int, int]] = {}


def register_dataset(name: str, doc: str, shape: tuple[int, int] | None = None) -> Callable[[Loader], Loader]:
    """Register ``loader(root, argument, image_size) -> Dataset`` under ``name``; duplicates raise.
    ``shape`` (classes, image size) lets tools size a model without reading any file."""

    def wrap(fn: Loader) -> Loader:
        if name in _DATASETS:
            raise ValueError(f"data set {name!r} is registered twice")
        _DATASETS[name] = fn
        _DOCS[name] = doc
        if shape is not None:
            _SHAPES[name] = shape
        return fn

    return wrap


def dataset_shape(spec: str) -> tuple[int, int] | None:
    """(classes, image size) of a named data set known without its files, else ``None``."""
    name, _ = parse_data_name(spec)
    return _SHAPES.get(name)


def list_datasets() -> dict[str, str]:
    """Registered data set names with a one-line description."""
    return dict(sorted(_DOCS.items()))


def parse_data_name(spec: str) -> tuple[str, str | None]:
    """Split ``"imagefolder:PATH"`` into its name and argument; a plain name has no argument."""
    name, sep, arg = spec.partition(":")
    if name not in _DATASETS:
        raise ArgumentError(
            f"unknown `data` set {spec!r}: choose one of {', '.join(f'{n}' for n in _DATASETS)}"
            " (imagefolder as imagefolder:PATH)"
        )
    if name == "imagefolder" and not arg:
        raise ArgumentError("imagefolder needs a path: `data` imagefolder:PATH (a folder with train/ and test/)")
    if name != "imagefolder" and sep:
        raise ArgumentError(f"data set {name!r} takes no ':' argument (give its location as `data_root`)")
    return name, (arg or None)


def default_root() -> Path:
    """Where downloads and extracted data sets live unless a ``root`` is given."""
    return Path(os.environ.get("SHALLOWDEEP_DATA", Path.home() / ".cache" / "shallowdeep" / "data"))


_DOWNLOAD: contextvars.ContextVar[bool] = contextvars.ContextVar("download", default=True)
_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("mode", default=None)
# the data sets loaded inside :func:`reuse_loaded`, by their arguments (None: outside, nothing kept)
_LOADED: contextvars.ContextVar[dict[tuple, Dataset] | None] = contextvars.ContextVar("loaded", default=None)
MODES = ("memory", "stream")


def downloads_allowed() -> bool:
    """Whether the :func:`load_dataset` call now running may fetch files (sources ask)."""
    return _DOWNLOAD.get()


def requested_mode() -> str | None:
    """The ``mode`` the :func:`load_dataset` call now running was given (image folders ask)."""
    return _MODE.get()


def load_dataset(
    spec: str,
    root: str | Path | None = None,
    image_size: int | None = None,
    download: bool = True,
    mode: str | None = None,
) -> Dataset:
    """Load a registered data set by name (``cifar10``, ``imagefolder:PATH``, …) with its splits.

    ``download=False`` never fetches or creates anything (what analyses of an existing run use).
    ``mode`` (image folders): ``"memory"`` decodes every image once into one array, ``"stream"``
    decodes per batch; ``None`` streams folders whose decoded images would pass 2 GiB.
    """
    name, arg = parse_data_name(spec)
    if mode not in (None, *MODES):
        raise ArgumentError(f"unknown `data_mode` {mode!r}: choose memory or stream")
    if mode == "stream" and name != "imagefolder":
        raise ArgumentError(f"{name} is held in memory; streaming (`data_mode` stream) is for imagefolder:PATH")
    if image_size is not None and not (isinstance(image_size, int) and MIN_SIZE <= image_size <= MAX_SIZE):
        raise ArgumentError(f"`image_size` must be an integer in {MIN_SIZE}..{MAX_SIZE} px, got {image_size}")
    if root is not None and Path(root).exists() and not Path(root).is_dir():
        raise ArgumentError(f"`data_root` {root} is a file: give the folder that holds (or will hold) the data set")
    loaded = _LOADED.get()
    key = (spec, str(Path(root).expanduser().resolve()) if root else None, image_size, mode)
    if loaded is not None and key in loaded:
        return loaded[key]
    token, mode_token = _DOWNLOAD.set(download), _MODE.set(mode)
    try:
        data = _DATASETS[name](Path(root) if root else None, arg, image_size)
    finally:
        _DOWNLOAD.reset(token)
        _MODE.reset(mode_token)
    if loaded is not None:
        loaded[key] = data
    return data


@contextlib.contextmanager
def reuse_loaded() -> Iterator[None]:
    """Inside it, :func:`load_dataset` returns the data set it loaded before for the same arguments
    instead of reading the files again. For a pipeline that loads one data set in every stage and
    trusts its files not to change while it runs (``reproduce``: listing and reading a CIFAR-sized
    folder's 60,000 files takes seconds, four times after the first stage); data sets are never
    modified in place (poisoning and resident copies make new ones), so sharing one is safe."""
    token = _LOADED.set({})
    try:
        yield
    finally:
        _LOADED.reset(token)
