"""Image files as RGB pictures, and the one resize rule every path shares (PIL and numpy; no torch).

Training's evaluation batches (memory or streamed), ``predict --resize`` and the torch-free
deployment runtime all call :func:`fit_image`, so a model sees the same pixels wherever it runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")


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


def open_rgb(path: str | Path):
    """One image file as a PIL RGB image (16-bit and float images scaled, not clipped)."""
    from PIL import Image

    try:
        with Image.open(path) as im:  # closed however reading ends (an unclosed file warns)
            im.load()
            return _rgb(im)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path} claims to be too large to be a real image ({e}); remove or replace the file") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}; remove or replace the file") from None


def _rgb(im):
    """A loaded PIL image as a new RGB image."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(a / hi * 255.0 + 0.5, 0, 255).astype(np.uint8)).convert("RGB")
    return im.convert("RGB")


def fitted_array(im, size: int) -> tuple[np.ndarray, bool]:
    """A PIL RGB image as a ``size`` x ``size`` uint8 array (:func:`fit_image`), and whether it was
    not square (so cropped)."""
    return np.asarray(fit_image(im, size), dtype=np.uint8), im.size[0] != im.size[1]


def read_fitted(path: str | Path, size: int) -> tuple[np.ndarray, bool]:
    """An image file through :func:`open_rgb` and :func:`fitted_array`."""
    return fitted_array(open_rgb(path), size)


def decode_share(folder: str | Path, share: int, size: int) -> None:
    """Decode the files listed in ``folder/SHARE.json`` (:func:`read_fitted`) into
    ``folder/SHARE.npy`` (uint8 ``[N, size, size, 3]``) and ``folder/SHARE-cropped.npy``: the work
    of one worker process when a large folder decodes in several (``python -m
    shallowdeep.core.images FOLDER SHARE SIZE``; PIL and numpy only, so it starts without torch)."""
    import json

    folder = Path(folder)
    paths = json.loads((folder / f"{share}.json").read_text())
    arrays = [read_fitted(p, size) for p in paths]
    np.save(folder / f"{share}-cropped.npy", np.array([c for _, c in arrays], dtype=bool))
    images = np.stack([a for a, _ in arrays]) if arrays else np.zeros((0, size, size, 3), np.uint8)
    np.save(folder / f"{share}.npy", images)


def fit_image(im, size: int):
    """Resize so the shorter side is ``size`` (bilinear), then crop the centre ``size`` x ``size``:
    a square image is just resized, another keeps its proportions instead of being squashed."""
    from PIL import Image

    w, h = im.size
    if (w, h) == (size, size):
        return im
    if w != h:
        s = size / min(w, h)
        im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        return im.crop((left, top, left + size, top + size))
    return im.resize((size, size), Image.BILINEAR)


if __name__ == "__main__":
    import sys

    decode_share(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
