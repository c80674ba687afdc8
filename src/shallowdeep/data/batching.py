"""The batches of one pass over a split: shuffled and augmented for training, sharded across ranks."""

from __future__ import annotations

from collections.abc import Iterator

import torch

from .augmentation import augment, normalize
from .sets import Dataset, ImageSet
from .streamed import StreamSet


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
