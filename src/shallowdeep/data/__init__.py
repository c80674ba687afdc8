"""Data sets held in memory as uint8 tensors, a fixed validation split, and batched augmentation.

Every data set is decoded once into ``[N, H, W, 3]`` uint8 tensors (as airbench does) so that an
epoch is a handful of tensor operations rather than a worker pool decoding files. Augmentation (the
paper's random crop with padding, horizontal flip, and for Tiny ImageNet colour jitter) runs on
whole batches.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.catalog import DATASETS
from ..core.errors import ArgumentError, DataError
from ..core.images import fit_image, fitted_array, open_rgb, read_fitted
from .streamed import StreamSet

VAL_FRACTION = 0.1
VAL_SEED = 0  # fixed, independent of the training seed, so every run of a data set shares one split
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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


# --------------------------------------------------------------------------------------------------
# registry

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


MIN_SIZE, MAX_SIZE = 8, 1024
_DOWNLOAD: contextvars.ContextVar[bool] = contextvars.ContextVar("download", default=True)
_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("mode", default=None)
# the data sets loaded inside :func:`reuse_loaded`, by their arguments (None: outside, nothing kept)
_LOADED: contextvars.ContextVar[dict[tuple, Dataset] | None] = contextvars.ContextVar("loaded", default=None)
MODES = ("memory", "stream")
MEMORY_BUDGET = 2 << 30  # decoded bytes above which an image folder is streamed unless told otherwise
STREAM_SIZE = 224  # the largest size streamed images are decoded at when no `image_size` is given


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


def _finish(
    name: str,
    classes: list[str],
    train: ImageSet,
    test: ImageSet,
    image_size: int | None,
    mean=None,
    std=None,
    val: ImageSet | None = None,
    **kw,
) -> Dataset:
    if image_size is not None and image_size != train.images.shape[1]:
        train = ImageSet(resize(train.images, image_size), train.labels, train.ids)
        test = ImageSet(resize(test.images, image_size), test.labels, test.ids)
    if val is None:
        train, val = carve_validation(train)
    if mean is None:
        mean, std = train.channel_stats() if isinstance(train, StreamSet) else channel_stats(train.images)
    return Dataset(name, classes, train, val, test, tuple(mean), tuple(std), **kw)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize of uint8 ``[N, H, W, 3]`` images to ``size`` x ``size``."""
    x = images.permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _as_set(images: np.ndarray, labels) -> ImageSet:
    labels_t = torch.as_tensor(np.asarray(labels), dtype=torch.int64)
    return ImageSet(torch.from_numpy(np.ascontiguousarray(images)), labels_t, torch.arange(len(labels_t)))


# --------------------------------------------------------------------------------------------------
# CIFAR (torchvision)

_CIFAR = {
    "cifar10": (
        "CIFAR10",
        "cifar-10-python.tar.gz",
        "cifar-10-batches-py",
        "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
    ),
    "cifar100": (
        "CIFAR100",
        "cifar-100-python.tar.gz",
        "cifar-100-python",
        "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
        (0.507, 0.487, 0.441),
        (0.267, 0.256, 0.276),
    ),
}


def _cifar(name: str, root: Path | None, image_size: int | None) -> Dataset:
    import torchvision

    cls_name, archive, folder, url, mean, std = _CIFAR[name]
    cls = getattr(torchvision.datasets, cls_name)
    root = root or default_root()
    have = (root / folder).is_dir()  # else torchvision downloads, or extracts an archive already there
    has_archive = (root / archive).is_file()
    if not have and not _DOWNLOAD.get():
        raise DataError(
            f"{name} is not in {root} (no {folder}/): put {archive} ({url}) there and extract it, or "
            "train once with the data set online"
        )
    created = not root.exists()
    splits = []
    for train in (True, False):
        try:
            # torchvision checks every file's MD5 before reading it, so only the official files
            # (whose format is Python pickles) are ever opened
            ds = cls(str(root), train=train, download=not have)
        except (RuntimeError, OSError, EOFError, ValueError) as e:
            if created:  # leave no empty folder behind for a download that never happened
                import shutil

                shutil.rmtree(root, ignore_errors=True)
            if have:
                raise DataError(
                    f"{name} files in {root / folder} are missing or corrupted ({e}): delete that folder "
                    f"and put {archive} ({url}) in {root}"
                ) from None
            if has_archive:
                raise DataError(
                    f"{root / archive} is damaged ({type(e).__name__}): delete it and download it again from {url}"
                ) from None
            raise DataError(
                f"cannot download {name} ({e.__class__.__name__}): put {archive} ({url}) in "
                f"{root} or set `data_root` to the folder holding it"
            ) from None
        splits.append(_as_set(ds.data, ds.targets))
    return _finish(name, list(ds.classes), splits[0], splits[1], image_size, mean, std)


@register_dataset("cifar10", DATASETS["cifar10"], (10, 32))
def cifar10(root: Path | None, arg: str | None, image_size: int | None) -> Dataset:
    return _cifar("cifar10", root, image_size)


@register_dataset("cifar100", DATASETS["cifar100"], (100, 32))
def cifar100(root: Path | None, arg: str | None, image_size: int | None) -> Dataset:
    return _cifar("cifar100", root, image_size)


# --------------------------------------------------------------------------------------------------
# image files: Tiny ImageNet and any train/ + test/ folder


def read_image(path: str | Path, size: int | None = None, resize: bool = True) -> np.ndarray:
    """One image file as uint8 RGB ``[S, S, 3]``. With ``size``, an image of another size is fitted
    (shorter side resized, centre crop: :func:`~shallowdeep.core.images.fit_image`) when ``resize``, else
    refused with a :class:`DataError` naming the sizes."""
    im = open_rgb(path)
    if size is not None and im.size != (size, size):
        if not resize:
            raise DataError(
                f"{path} is {im.size[0]}x{im.size[1]} px; the model takes {size}x{size}: resize it (`resize`)"
            )
        im = fit_image(im, size)
    return np.array(im, dtype=np.uint8)  # a writable copy: torch.from_numpy takes it without a warning


def image_paths(paths: list[str | Path]) -> list[Path]:
    """Image files named directly or found (recursively, sorted) in the folders named."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            found.append(p)
        else:
            raise DataError(f"{p} does not exist: give image files or folders of images")
    if not found:
        raise DataError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {' '.join(map(str, paths))}")
    return found


def _decode(paths: list[Path], size: int | None) -> np.ndarray:
    """Decode image files to one uint8 ``[N, S, S, 3]`` array (RGB; resized when ``size`` differs)."""
    if not paths:
        return np.zeros((0, size or 1, size or 1, 3), np.uint8)
    first = _first_size(paths[0])
    size = first if size is None else size
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise DataError(
            f"{paths[0]} is {size} px high; images of {MIN_SIZE}..{MAX_SIZE} px are supported: resize the "
            "data set (`image_size`)"
        )
    chunks = [paths[i : i + 256] for i in range(0, len(paths), 256)]
    if first > 64:  # larger ones spend their time in decoders and resizing that leave the interpreter free
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            arrays = [a for part in pool.map(lambda c: _read_chunk(c, size), chunks) for a in part]
    else:
        many = len(paths) >= PROCESS_MIN_FILES and _decode_processes() > 1
        arrays = _decode_in_processes(paths, size) if many else None  # None: a worker failed
        if arrays is None:
            # small images: the per-file interpreter work dominates and threads only contend for the
            # interpreter lock (60,000 CIFAR JPEGs on this 2-core VM: 4.2 s in one thread, 4.8 s in two)
            arrays = [a for c in chunks for a in _read_chunk(c, size)]
    cropped = sum(changed for _, changed in arrays)
    if cropped:
        import warnings

        warnings.warn(
            f"{cropped} of {len(paths)} images are not square: resized (shorter side to {size} px) and "
            "centre-cropped, not squashed",
            stacklevel=2,
        )
    return np.stack([a for a, _ in arrays])


# Many small images on a machine of many cores decode in worker processes, which sidestep the
# interpreter lock that keeps threads to one core here. Each worker is a fresh interpreter running
# PIL (core.images: no torch to import, so it starts in a fraction of a second; the pixels are the
# same as torchvision's decoder gives, tested) on a share of the files, handed over as files in a
# temporary folder (plain .npy and JSON). Measured on the 2-core VM: PIL takes 0.15-0.17 ms per CIFAR
# JPEG in one process, so 60,000 files take about 9 s there in one process, and the first stage of a
# fresh GPU machine waits for them; 16 processes share that.
PROCESS_MIN_FILES = 8192
MAX_DECODE_PROCESSES = 16


def _decode_processes() -> int:
    """Worker processes for decoding: the cores this process may use (at most 16), none below 4
    (with two or three, one process and no start-up cost is as good)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return min(cores, MAX_DECODE_PROCESSES) if cores >= 4 else 1


def _decode_in_processes(paths: list[Path], size: int) -> list[tuple[np.ndarray, bool]] | None:
    """:func:`~shallowdeep.core.images.decode_share` over ``paths`` in worker processes, in order;
    ``None`` if any worker failed (the caller decodes in this process, where a bad file's error is
    worded as usual)."""
    import json
    import subprocess
    import tempfile

    from ..core.children import python_child

    n = _decode_processes()
    step = -(-len(paths) // n)
    with tempfile.TemporaryDirectory(prefix="shallowdeep-decode-") as tmp:
        shares = [paths[i : i + step] for i in range(0, len(paths), step)]
        for k, share in enumerate(shares):
            (Path(tmp) / f"{k}.json").write_text(json.dumps([str(p) for p in share]))
        workers = [
            python_child(
                ["-m", "shallowdeep.core.images", tmp, str(k), str(size)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for k in range(len(shares))
        ]
        if any([w.wait() for w in workers]):  # every one waited for, then: did any fail?
            return None
        out: list[tuple[np.ndarray, bool]] = []
        for k in range(len(shares)):
            images = np.load(Path(tmp) / f"{k}.npy", allow_pickle=False)
            cropped = np.load(Path(tmp) / f"{k}-cropped.npy", allow_pickle=False)
            out += list(zip(images, cropped.tolist()))
        return out


def _read_chunk(paths: list[Path], size: int) -> list[tuple[np.ndarray, bool]]:
    """Decode files like :func:`~shallowdeep.core.images.read_fitted`. JPEGs go through torchvision's
    libjpeg-turbo decoder
    (the same pixels as PIL's, tested) with less interpreter work per file: the 60,000 CIFAR-10 JPEGs
    took 13.9 s through PIL on the 2-core development VM's two threads, 3.9 s this way in one (medians
    of 3, alternated; 18.5 s and 7.1 s in a second, noisier set). Any file it refuses goes through
    PIL, which also words the error."""
    from PIL import Image

    jpeg = [i for i, p in enumerate(paths) if p.suffix.lower() in (".jpg", ".jpeg")]
    out: list[tuple[np.ndarray, bool] | None] = [None] * len(paths)
    for i, a in zip(jpeg, _decode_jpegs([paths[i] for i in jpeg])):
        if a is not None:
            # an image already at its size skips the PIL round trip (most of a CIFAR-like folder)
            out[i] = (a, False) if a.shape[:2] == (size, size) else fitted_array(Image.fromarray(a), size)
    return [o if o is not None else read_fitted(p, size) for o, p in zip(out, paths)]


def _decode_jpegs(paths: list[Path]) -> list[np.ndarray | None]:
    """RGB ``[H, W, 3]`` uint8 arrays of JPEG files, ``None`` where torchvision cannot decode one into
    RGB or grey (a damaged file, CMYK): those are left to PIL."""
    if not paths:
        return []
    try:  # deprecated since torchvision 0.29 in favour of TorchCodec: once removed, PIL decodes all
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return [None] * len(paths)

    from PIL import Image

    out: list[np.ndarray | None] = []
    for p in paths:
        try:
            raw = p.read_bytes()
            hw = _jpeg_size(raw)
            # PIL guards against decompression bombs and torchvision does not: a file whose header
            # claims more pixels than PIL takes without a warning goes to PIL, which says so
            if hw is None or hw[0] * hw[1] > (Image.MAX_IMAGE_PIXELS or float("inf")):
                out.append(None)
                continue
            img = decode_jpeg(torch.frombuffer(bytearray(raw), dtype=torch.uint8), mode=ImageReadMode.UNCHANGED)
        except (OSError, RuntimeError, ValueError):  # unreadable, not a JPEG it takes, or empty
            out.append(None)
            continue
        if img.shape[0] not in (1, 3):
            out.append(None)
            continue
        a = img.permute(1, 2, 0).numpy()
        out.append(np.repeat(a, 3, axis=2) if a.shape[2] == 1 else np.ascontiguousarray(a))
    return out


def _jpeg_size(raw: bytes) -> tuple[int, int] | None:
    """(height, width) from a JPEG's frame header, or ``None`` if none is found where it should be."""
    if raw[:2] != b"\xff\xd8":
        return None
    i = 2
    while i + 9 <= len(raw):
        if raw[i] != 0xFF:
            return None
        marker = raw[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # a start of frame
            return int.from_bytes(raw[i + 5 : i + 7], "big"), int.from_bytes(raw[i + 7 : i + 9], "big")
        if marker in (0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # markers without a length
            i += 2
            continue
        i += 2 + int.from_bytes(raw[i + 2 : i + 4], "big")
    return None


def _cache_dir() -> Path:
    return Path(os.environ.get("SHALLOWDEEP_CACHE", Path.home() / ".cache" / "shallowdeep" / "decoded"))


def _decode_cached(paths: list[Path], size: int | None) -> np.ndarray:
    """``_decode`` with a cache keyed by the files' paths, sizes and times (plain .npy, no pickle)."""
    h = hashlib.sha256(str(size).encode())
    folders: dict[Path, str] = {}  # each folder resolved once, not each of its files (seconds for 60,000)
    for p in paths:
        st = os.stat(p)
        where = folders.get(p.parent) or folders.setdefault(p.parent, str(p.parent.resolve()))
        h.update(f"{os.path.join(where, p.name)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    cache = _cache_dir() / f"{h.hexdigest()[:32]}.npy"
    if cache.is_file():
        try:
            return np.load(cache, allow_pickle=False)
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    arr = _decode(paths, size)
    try:
        from ..core.io import atomic_write

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: np.save(f, arr, allow_pickle=False))
    except OSError:
        pass  # caching is an optimisation; a read-only home must not stop a run
    return arr


def _images_in(folder: Path) -> list[Path]:
    # scandir's entries know their type from the directory listing: no stat per file (a CIFAR-sized
    # folder has 60,000 of them, and every training stage lists them again)
    with os.scandir(folder) as entries:
        names = [e.name for e in entries if os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES and e.is_file()]
    return [folder / n for n in sorted(names)]


def _class_folders(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))


def _folder_split(base: Path, part: str, classes: list[str]) -> tuple[list[Path], list[int]]:
    paths, labels = [], []
    for i, c in enumerate(classes):
        folder = base / part / c
        if folder.is_dir():
            found = _images_in(folder)
            if part == "train" and not found:
                raise DataError(
                    f"class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}): add images "
                    "or remove the folder"
                )
            paths += found
            labels += [i] * len(found)
    if not paths:
        raise DataError(f"{base / part} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return paths, labels


def _first_size(path: Path) -> int:
    """The height of an image file (the size a folder's images take when none is asked)."""
    return open_rgb(path).size[1]


@register_dataset("imagefolder", DATASETS["imagefolder"])
def imagefolder(root: Path | None, arg: str | None, image_size: int | None) -> Dataset:
    base = Path(arg or "").expanduser()
    for part in ("train", "test"):
        if not (base / part).is_dir():
            raise DataError(
                f"{base / part} is not a folder: imagefolder:PATH needs PATH/train/<class>/ and "
                "PATH/test/<class>/ folders of images (and optionally val/<class>/)"
            )
    classes = _class_folders(base / "train")
    if not classes:
        raise DataError(f"{base / 'train'} has no class folders: put each class's images in train/<class>/")
    parts = ["train", "test"] + (["val"] if (base / "val").is_dir() else [])
    for part in parts[1:]:
        missing = sorted(set(_class_folders(base / part)) - set(classes))
        if missing:
            raise DataError(
                f"{part}/ has classes that train/ lacks ({', '.join(missing[:5])}): use the same class "
                "folders in every split"
            )
    found = {part: _folder_split(base, part, classes) for part in parts}
    mode = _MODE.get()
    if mode is None:
        size = image_size or _first_size(found["train"][0][0])
        n = sum(len(p) for p, _ in found.values())
        mode = "stream" if n * size * size * 3 > MEMORY_BUDGET else "memory"
    meta = {"path": str(base.resolve()), "data_mode": mode, "val_from": "val/" if "val" in found else "train/"}
    sets: dict[str, Any] = {}
    if mode == "stream":
        # photographs come down to 224 px; a folder of small images keeps their size (a CIFAR-like
        # folder streamed because it is large must not be blown up sevenfold)
        size = image_size or min(_first_size(found["train"][0][0]), STREAM_SIZE)
        for part, (paths, labels) in found.items():
            sets[part] = StreamSet(paths, torch.as_tensor(labels, dtype=torch.int64), torch.arange(len(labels)), size)
    else:
        size = image_size
        for part in parts:
            arr = _decode_cached(found[part][0], size)
            size = arr.shape[1]  # the other splits take the training images' size
            sets[part] = _as_set(arr, found[part][1])
    return _finish(f"imagefolder:{base}", classes, sets["train"], sets["test"], None, meta=meta, val=sets.get("val"))


def _tiny_root(root: Path | None) -> Path:
    root = root or default_root()
    for cand in (root, root / "tiny-imagenet-200"):
        if (cand / "train").is_dir() and (cand / "val" / "val_annotations.txt").is_file():
            return cand
    raise DataError(
        f"no Tiny ImageNet in {root}: download http://cs231n.stanford.edu/tiny-imagenet-200.zip, "
        f"unzip it there (train/, val/val_annotations.txt) or set `data_root`"
    )


@register_dataset("tinyimagenet", DATASETS["tinyimagenet"], (200, 64))
def tinyimagenet(root: Path | None, arg: str | None, image_size: int | None) -> Dataset:
    base = _tiny_root(root)
    wnids_file = base / "wnids.txt"
    wnids = sorted(wnids_file.read_text().split()) if wnids_file.is_file() else _class_folders(base / "train")
    index = {w: i for i, w in enumerate(wnids)}
    paths, labels = [], []
    for w in wnids:
        found = _images_in(base / "train" / w / "images") if (base / "train" / w / "images").is_dir() else []
        paths += found
        labels += [index[w]] * len(found)
    if not paths:
        raise DataError(f"{base / 'train'} holds no images in <wnid>/images/: is this Tiny ImageNet?")
    train = _as_set(_decode_cached(paths, 64), labels)
    # validation labels come from val_annotations.txt; the user's files are read where they are
    vpaths, vlabels = [], []
    for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            vpaths.append(base / "val" / "images" / parts[0])
            vlabels.append(index[parts[1]])
    missing = [p for p in vpaths if not p.is_file()]
    if missing:
        raise DataError(f"val_annotations.txt names {len(missing)} missing files (first: {missing[0]})")
    test = _as_set(_decode_cached(vpaths, 64), vlabels)
    names = {}
    words = base / "words.txt"
    if words.is_file():
        for line in words.read_text().splitlines():
            w, _, text = line.partition("\t")
            if w in index:
                names[w] = text.split(",")[0].strip()
    return _finish(
        "tinyimagenet",
        wnids,
        train,
        test,
        image_size,
        (0.4802, 0.4481, 0.3975),
        (0.2302, 0.2265, 0.2262),
        jitter=0.2,
        meta={"class_names": [names.get(w, w) for w in wnids]},
    )


# --------------------------------------------------------------------------------------------------
# the embedded default


@register_dataset("digits", DATASETS["digits"], (10, 32))
def digits(root: Path | None, arg: str | None, image_size: int | None) -> Dataset:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.as_tensor(d.images, dtype=torch.float32) * (255.0 / 16.0)  # [1797, 8, 8]
    x = x.round().to(torch.uint8)[..., None].expand(-1, -1, -1, 3)
    images = resize(x, image_size or 32)
    labels = torch.as_tensor(d.target, dtype=torch.int64)
    # digits has no official split: a fixed 20 % test split, then validation from the rest
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    n_test = len(labels) // 5
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    whole = ImageSet(images, labels, torch.arange(len(labels)))
    # mirrored digits are other shapes, so no flips here
    return _finish(
        "digits", [str(i) for i in range(10)], whole.subset(train_idx), whole.subset(test_idx), None, flip=False
    )


# --------------------------------------------------------------------------------------------------
# batches


def augment(images: torch.Tensor, pad: int, flip: bool, jitter: float, generator: torch.Generator) -> torch.Tensor:
    """The paper's augmentation on a uint8 ``[B, H, W, 3]`` batch; returns float ``[B, H, W, 3]`` in [0, 1].

    Random crop after zero padding by ``pad`` pixels, horizontal flip with probability 0.5, and when
    ``jitter > 0`` brightness, contrast and saturation jitter by factors in [1 - jitter, 1 + jitter].
    """
    b, h, w, _ = images.shape
    dev = images.device  # random numbers are drawn where the images are (``generator`` lives there too)
    padded = torch.nn.functional.pad(images, (0, 0, pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device=dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, :, None]  # [B, H, 1]
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, :]  # [B, 1, W]
    if flip:
        flipped = torch.rand(b, generator=generator, device=dev) < 0.5
        cols = torch.where(flipped[:, None, None], cols.flip(-1), cols)
    x = padded[torch.arange(b, device=dev)[:, None, None], rows, cols].float() / 255
    if jitter > 0:
        luma = torch.tensor([0.299, 0.587, 0.114], device=dev)

        def factor() -> torch.Tensor:
            return (1 + (torch.rand(b, generator=generator, device=dev) * 2 - 1) * jitter)[:, None, None, None]

        x = x * factor()
        gray = (x * luma).sum(-1, keepdim=True)
        mean = gray.mean(dim=(1, 2, 3), keepdim=True)
        x = (x - mean) * factor() + mean
        gray = (x * luma).sum(-1, keepdim=True)
        x = (x - gray) * factor() + gray
        x = x.clamp(0, 1)
    return x


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (or [0, 1] float) ``[N, H, W, 3]`` images -> normalised float ``[N, 3, H, W]``.

    The result keeps NHWC memory under an NCHW view: channels-last for free.
    """
    x = images.float() / 255 if images.dtype == torch.uint8 else images
    m = mean if isinstance(mean, torch.Tensor) else torch.tensor(mean, device=x.device)
    sd = std if isinstance(std, torch.Tensor) else torch.tensor(std, device=x.device)
    return ((x - m.view(1, 1, 1, 3)) / sd.view(1, 1, 1, 3)).permute(0, 3, 1, 2)


class Batches:
    """The batches of one pass over a split: iterable, with ``len`` (the number of batches).

    With ``train=True`` the order is shuffled and every batch augmented, both driven by
    ``generator`` (so a seeded generator makes an epoch exactly repeatable); otherwise the order is
    fixed. Batches are normalised float ``[B, 3, H, W]`` (channels-last memory) on ``device``.
    With ``drop_last`` a last partial batch is left out, so every batch has one shape (compiled
    steps then never recompile); shuffled, a different remainder is left out each epoch.
    """

    def __init__(
        self,
        data: Dataset,
        split: str | ImageSet,
        batch_size: int,
        *,
        train: bool = False,
        generator: torch.Generator | None = None,
        device: torch.device | str = "cpu",
        shard: tuple[int, int] = (0, 1),
        drop_last: bool = False,
    ) -> None:
        self.data = data
        self.set = data.split(split) if isinstance(split, str) else split
        self.batch_size = batch_size
        self.train = train
        self.generator = generator
        self.device = device
        self.rank, self.world = shard
        self.drop_last = drop_last

    def _ends(self) -> int:
        """Where the batches stop: the whole split, or its last full batch with ``drop_last``."""
        n = len(self.set)
        return n - n % self.batch_size if self.drop_last and n >= self.batch_size else n

    def __len__(self) -> int:
        return -(-self._ends() // self.batch_size)

    def _share(self, idx: torch.Tensor) -> torch.Tensor:
        """This process's share of one global batch: every world-th input from its rank (disjoint)."""
        return idx[self.rank :: self.world] if self.world > 1 else idx

    def positions(self) -> torch.Tensor:
        """The split positions this process's batches hold, in the order they come (no shuffling)."""
        if self.train:
            raise ValueError("positions() describes an unshuffled pass; training batches are shuffled")
        n = len(self.set)
        parts = [self._share(torch.arange(a, min(a + self.batch_size, n))) for a in range(0, n, self.batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        s, data = self.set, self.data
        n = len(s)
        dev = s.images.device  # a resident data set is shuffled and augmented where it lives
        order = torch.randperm(n, generator=self.generator, device=dev) if self.train else torch.arange(n, device=dev)
        # a batch travels as stored (uint8: a quarter of the floats' bytes) and is normalised where it goes
        target = torch.device(self.device)
        mean, std = torch.tensor(data.mean, device=target), torch.tensor(data.std, device=target)  # once, not per batch
        aug = self.generator or torch.Generator(dev)
        if self.world > 1 and self.train:
            # every rank draws the same order (same seed); each augments its own share with its own stream
            aug = torch.Generator(dev).manual_seed(
                int(torch.randint(2**62, (1,), generator=self.generator, device=dev)) + self.rank
            )
        if isinstance(s, StreamSet):
            # files decoded and augmented (RandomResizedCrop, flip) by workers, seeded from the generator
            parts = [self._share(order[a : a + self.batch_size]) for a in range(0, self._ends(), self.batch_size)]
            parts = [p for p in parts if len(p)]
            seed = int(torch.randint(2**62, (1,), generator=aug)) if self.train else 0
            for idx, imgs in zip(parts, s.batches([p.tolist() for p in parts], self.train, seed)):
                x = normalize(imgs.to(target, non_blocking=True), mean, std)
                yield x, s.labels[idx].to(target, non_blocking=True)
            return
        for start in range(0, self._ends(), self.batch_size):
            idx = order[start : start + self.batch_size]
            idx = self._share(idx)
            if not len(idx):
                continue
            imgs = s.images[idx]
            if self.train:
                imgs = augment(imgs, data.pad, data.flip, data.jitter, aug)
            x = normalize(imgs.to(target, non_blocking=True), mean, std)
            yield x, s.labels[idx].to(target, non_blocking=True)


def batches(
    data: Dataset,
    split: str | ImageSet,
    batch_size: int,
    *,
    train: bool = False,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    shard: tuple[int, int] = (0, 1),
    drop_last: bool = False,
) -> Batches:
    """The :class:`Batches` of one pass over ``split`` (see there). With ``shard=(rank, world)``
    the batches are of the *global* ``batch_size`` and this process gets its ``1/world`` of each."""
    return Batches(
        data, split, batch_size, train=train, generator=generator, device=device, shard=shard, drop_last=drop_last
    )
