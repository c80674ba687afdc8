"""Where each named data set comes from: CIFAR (torchvision), image folders, Tiny ImageNet, digits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..core.catalog import DATASETS
from ..core.errors import DataError
from ..core.images import IMAGE_SUFFIXES
from .decode import cached_array, decode_cached, first_size
from .registry import default_root, downloads_allowed, register_dataset, requested_mode
from .sets import Dataset, ImageSet, as_set, finish, resize
from .streamed import StreamSet

MEMORY_BUDGET = 2 << 30  # decoded bytes above which an image folder is streamed unless told otherwise
STREAM_SIZE = 224  # the largest size streamed images are decoded at when no `image_size` is given

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
    if not have and not downloads_allowed():
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
        splits.append(as_set(ds.data, ds.targets))
    return finish(name, list(ds.classes), splits[0], splits[1], image_size, mean, std)


@register_dataset("cifar10", DATASETS["cifar10"], (10, 32))
def cifar10(root: Path | None, arg: str | None, image_size: int | None) -> Dataset:
    return _cifar("cifar10", root, image_size)


@register_dataset("cifar100", DATASETS["cifar100"], (100, 32))
def cifar100(root: Path | None, arg: str | None, image_size: int | None) -> Dataset:
    return _cifar("cifar100", root, image_size)


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
    mode = requested_mode()
    if mode is None:
        size = image_size or first_size(found["train"][0][0])
        n = sum(len(p) for p, _ in found.values())
        mode = "stream" if n * size * size * 3 > MEMORY_BUDGET else "memory"
    meta = {"path": str(base.resolve()), "data_mode": mode, "val_from": "val/" if "val" in found else "train/"}
    sets: dict[str, ImageSet | StreamSet] = {}
    if mode == "stream":
        _refuse_empty_files(found)  # read per batch, an empty file would fail only when its batch comes
        # photographs come down to 224 px; a folder of small images keeps their size (a CIFAR-like
        # folder streamed because it is large must not be blown up sevenfold)
        size = image_size or min(first_size(found["train"][0][0]), STREAM_SIZE)
        for part, (paths, labels) in found.items():
            sets[part] = StreamSet(paths, torch.as_tensor(labels, dtype=torch.int64), torch.arange(len(labels)), size)
    else:
        size = image_size
        for part in parts:
            arr = decode_cached(found[part][0], size)
            size = arr.shape[1]  # the other splits take the training images' size
            sets[part] = as_set(arr, found[part][1])
    return finish(f"imagefolder:{base}", classes, sets["train"], sets["test"], None, meta=meta, val=sets.get("val"))


def _refuse_empty_files(found: dict[str, tuple[list[Path], list[int]]]) -> None:
    for part, (paths, _) in found.items():
        for p in paths:
            if os.stat(p).st_size == 0:
                raise DataError(f"{p} is empty (0 bytes), not an image: remove it or replace it ({part}/ split)")


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
    train = as_set(decode_cached(paths, 64), labels)
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
    test = as_set(decode_cached(vpaths, 64), vlabels)
    names = {}
    words = base / "words.txt"
    if words.is_file():
        for line in words.read_text().splitlines():
            w, _, text = line.partition("\t")
            if w in index:
                names[w] = text.split(",")[0].strip()
    return finish(
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
    from importlib.metadata import version

    # read from the decoded cache after the first call: importing scikit-learn costs a second or more in
    # every process, which every command on the default data set would pay again
    table = torch.as_tensor(cached_array(f"digits-scikit-learn-{version('scikit-learn')}", _digits_table, _is_digits))
    x = table[:, :64].reshape(-1, 8, 8).float() * (255.0 / 16.0)  # [1797, 8, 8]
    x = x.round().to(torch.uint8)[..., None].expand(-1, -1, -1, 3)
    images = resize(x, image_size or 32)
    labels = table[:, 64].to(torch.int64)
    # digits has no official split: a fixed 20 % test split, then validation from the rest
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    n_test = len(labels) // 5
    test_idx, train_idx = perm[:n_test].sort().values, perm[n_test:].sort().values
    whole = ImageSet(images, labels, torch.arange(len(labels)))
    # mirrored digits are other shapes, so no flips here
    return finish(
        "digits", [str(i) for i in range(10)], whole.subset(train_idx), whole.subset(test_idx), None, flip=False
    )


def _digits_table() -> np.ndarray:
    """scikit-learn's digits as one uint8 table: a row per image, its 64 pixel values (0-16), then its label."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.concatenate([d.images.reshape(len(d.target), 64), d.target[:, None]], axis=1).astype(np.uint8)


def _is_digits(table: np.ndarray) -> bool:
    """A cached digits table has the shape, type and value ranges that scikit-learn's digits have."""
    if table.dtype != np.uint8 or table.shape != (1797, 65):
        return False
    return int(table[:, :64].max()) <= 16 and int(table[:, 64].max()) <= 9
