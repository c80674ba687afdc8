"""Image files to uint8 arrays: one file, many (libjpeg-turbo, worker processes), and a decoded cache."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from ..core.errors import DataError
from ..core.images import fit_image, fitted_array, open_rgb, read_fitted

MIN_SIZE, MAX_SIZE = 8, 1024


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


def _decode(paths: list[Path], size: int | None) -> np.ndarray:
    """Decode image files to one uint8 ``[N, S, S, 3]`` array (RGB; resized when ``size`` differs)."""
    if not paths:
        return np.zeros((0, size or 1, size or 1, 3), np.uint8)
    first = first_size(paths[0])
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


def decode_cached(paths: list[Path], size: int | None) -> np.ndarray:
    """``_decode`` with a cache keyed by the files' paths, sizes and times (plain .npy, no pickle)."""
    h = hashlib.sha256(str(size).encode())
    folders: dict[Path, str] = {}  # each folder resolved once, not each of its files (seconds for 60,000)
    for p in paths:
        st = os.stat(p)
        where = folders.get(p.parent) or folders.setdefault(p.parent, str(p.parent.resolve()))
        h.update(f"{os.path.join(where, p.name)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return cached_array(h.hexdigest()[:32], lambda: _decode(paths, size))


def cached_array(
    key: str, build: Callable[[], np.ndarray], valid: Callable[[np.ndarray], bool] | None = None
) -> np.ndarray:
    """The array stored under ``key`` in the cache folder (plain .npy, no pickle) when it loads and is
    ``valid`` (when given); else ``build()``, stored for the next call (best effort: a read-only home still works)."""
    cache = _cache_dir() / f"{key}.npy"
    if cache.is_file():
        try:
            arr = np.load(cache, allow_pickle=False)
            if valid is None or valid(arr):
                return arr
        except (OSError, ValueError):
            pass  # a damaged cache entry is rebuilt below
    arr = build()
    try:
        from ..core.io import atomic_write

        cache.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(cache, lambda f: np.save(f, arr, allow_pickle=False))
    except OSError:
        pass  # caching is an optimisation; a read-only home must not stop a run
    return arr


def first_size(path: Path) -> int:
    """The height of an image file (the size a folder's images take when none is asked)."""
    return open_rgb(path).size[1]
