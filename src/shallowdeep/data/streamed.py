"""Image folders of any size: files decoded per batch by DataLoader workers, never all at once.

A :class:`StreamSet` stands where an in-memory split would (``labels``, ``ids``, ``subset``, and
``images[index]`` that decodes just those files), so batching, records and analyses take either.
Training batches come from torchvision.transforms.v2 (RandomResizedCrop and a horizontal flip);
evaluation resizes the shorter side and takes the centre crop (:func:`~shallowdeep.core.images.fit_image`,
as the in-memory path and the deployment runtime do), so both see the same pixels.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from ..core.errors import UserError
from ..core.images import fit_image, open_rgb


class _Files(torch.utils.data.Dataset):
    """Files -> uint8 ``[S, S, 3]`` tensors, augmented (training) or fitted (evaluation)."""

    def __init__(self, paths: Sequence[Path], size: int, train: bool) -> None:
        self.paths, self.size, self.train = paths, size, train
        self.augment = None
        if train:
            from torchvision.transforms import v2

            self.augment = v2.Compose([v2.RandomResizedCrop(size, antialias=True), v2.RandomHorizontalFlip()])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        im = open_rgb(self.paths[i])
        im = self.augment(im) if self.augment is not None else fit_image(im, self.size)
        return torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())


def _stack(items: list[torch.Tensor]) -> torch.Tensor:
    return torch.stack(items)


class _LazyImages:
    """``images[index]`` of a :class:`StreamSet`: decodes those files (evaluation transform)."""

    def __init__(self, owner: StreamSet) -> None:
        self.owner = owner
        self.device = torch.device("cpu")
        self.dtype = torch.uint8

    @property
    def shape(self) -> tuple[int, int, int, int]:
        s = self.owner.size
        return (len(self.owner), s, s, 3)

    def __len__(self) -> int:
        return len(self.owner)

    def __getitem__(self, index) -> torch.Tensor:
        idx = torch.as_tensor(index).reshape(-1).tolist() if not isinstance(index, int) else [index]
        files = _Files([self.owner.paths[i] for i in idx], self.owner.size, train=False)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:  # PIL releases the GIL
            out = (
                torch.stack(list(pool.map(files.__getitem__, range(len(files)))))
                if idx
                else torch.zeros(0, self.owner.size, self.owner.size, 3, dtype=torch.uint8)
            )
        return out[0] if isinstance(index, int) else out


class StreamSet:
    """One split kept as file paths: ``labels`` int64 ``[N]``, ``ids`` int64 ``[N]`` (positions in the
    folder's sorted file list), images decoded at ``size`` px when a batch needs them."""

    streamed = True

    def __init__(self, paths: Sequence[Path], labels: torch.Tensor, ids: torch.Tensor, size: int) -> None:
        self.paths = list(paths)
        self.labels = labels
        self.ids = ids
        self.size = size
        self.images = _LazyImages(self)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> StreamSet:
        return StreamSet([self.paths[i] for i in index.tolist()], self.labels[index], self.ids[index], self.size)

    def to(self, device: torch.device | str) -> StreamSet:
        """Files stay where they are; batches move to the device as they are made."""
        return self

    def batches(
        self, index_batches: list[list[int]], train: bool, seed: int, workers: int | None = None
    ) -> Iterator[torch.Tensor]:
        """uint8 ``[B, S, S, 3]`` batches for the given position lists, decoded by worker processes."""
        if not index_batches:
            return iter(())
        workers = min(8, os.cpu_count() or 1) if workers is None else workers
        loader = torch.utils.data.DataLoader(
            _Files(self.paths, self.size, train),
            batch_sampler=index_batches,
            num_workers=workers,
            collate_fn=_stack,
            generator=torch.Generator().manual_seed(seed),
            prefetch_factor=2 if workers else None,
            persistent_workers=False,
        )
        return _one_line_errors(loader)

    def channel_stats(self, sample: int = 1000) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and std in [0, 1] from an evenly spaced sample of the files."""
        n = len(self)
        pick = torch.linspace(0, n - 1, min(n, sample)).round().long().unique()
        x = self.images[pick].reshape(-1, 3).double() / 255
        return tuple(x.mean(0).tolist()), tuple(x.std(0).tolist())


def _one_line_errors(loader: torch.utils.data.DataLoader) -> Iterator[torch.Tensor]:
    """The loader's batches; a file a worker could not read (a :class:`UserError` there) comes back
    as that error's own line, not the worker's traceback that DataLoader wraps it in."""
    batches = iter(loader)
    while True:
        try:
            batch = next(batches)
        except StopIteration:
            return
        except UserError as e:
            lines = [line for line in str(e).splitlines() if line.strip()]
            last = lines[-1] if lines else type(e).__name__
            name = type(e).__name__
            said = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
            raise type(e)(said) from None
        yield batch
