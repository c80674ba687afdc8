"""The backdoor experiment (paper sections 4 and 5, spec section 11).

A white square trigger is pasted on a share of the training images, which are relabelled to a
target class; the CNN trained on that learns the backdoor. Turned into an SDN (IC-only, on clean
data), its early ICs often still see the true class: destructive overthinking induced on purpose,
and early exits recover accuracy on triggered inputs.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import torch

from ..core.errors import ArgumentError
from ..core.io import JSONObject
from .sets import Dataset, ImageSet

POISON_SEED = 0  # fixed, so that a resumed run poisons exactly the same inputs
DEFAULT_RATE = 0.1  # the spec gives none: a common BadNets-style share, recorded in run.json
DEFAULT_TARGET = 0


@dataclass(frozen=True)
class Backdoor:
    """Trigger square (``size`` px, top-left corner at ``row``, ``col``), poison ``rate`` and
    ``target`` class, in the pixels of the data set's images."""

    size: int
    row: int
    col: int
    rate: float
    target: int

    @classmethod
    def default(
        cls,
        image_size: int,
        rate: float | None = None,
        target: int | None = None,
        size: int | None = None,
        pos: tuple[int, int] | None = None,
    ) -> Backdoor:
        """The spec's trigger (5x5 at (26, 26) of a 32 px image) scaled to ``image_size``; any
        argument given overrides its default."""
        scale = image_size / 32
        s = size if size is not None else max(1, round(5 * scale))
        r, c = pos if pos is not None else (round(26 * scale), round(26 * scale))
        return cls(s, r, c, DEFAULT_RATE if rate is None else rate, DEFAULT_TARGET if target is None else target)

    @classmethod
    def from_options(cls, image_size: int, options: dict) -> Backdoor:
        """:meth:`default` from a request's options (``rate``, ``target``, ``size``, ``pos``; any of
        them missing or ``None``), each checked for its type where it enters (a --config file's
        values reach here as they were written)."""

        def number(key: str, name: str, whole: bool) -> float | int | None:
            v = options.get(key)
            ok = isinstance(v, int) if whole else isinstance(v, (int, float)) and math.isfinite(v)
            if v is not None and (isinstance(v, bool) or not ok):
                kind = "an integer" if whole else "a number"
                raise ArgumentError(f"`{name}` must be {kind}, got {v!r}")
            return v

        rate = number("rate", "poison_rate", False)
        target, size = number("target", "target_class", True), number("size", "trigger_size", True)
        pos = options.get("pos")
        if pos is not None and (
            not isinstance(pos, (list, tuple))
            or len(pos) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in pos)
        ):
            raise ArgumentError(f"`trigger_pos` takes two integers (row, column), got {pos!r}")
        return cls.default(image_size, rate, target, size, tuple(pos) if pos is not None else None)

    def check(self, image_size: int, num_classes: int) -> None:
        """Refuse a trigger off the image, a share outside (0, 1], or an unknown target class."""
        if (
            self.size < 1
            or self.row < 0
            or self.col < 0
            or self.row + self.size > image_size
            or self.col + self.size > image_size
        ):
            raise ArgumentError(
                f"a {self.size} px trigger at ({self.row}, {self.col}) does not fit a {image_size} px image: "
                "change `trigger_size` or `trigger_pos`"
            )
        if not 0 < self.rate <= 1:
            raise ArgumentError(f"`poison_rate` must lie in (0, 1], got {self.rate}")
        if not 0 <= self.target < num_classes:
            raise ArgumentError(f"`target_class` must lie in 0..{num_classes - 1}, got {self.target}")

    def to_json(self) -> JSONObject:
        return asdict(self)

    @classmethod
    def from_json(cls, d: JSONObject) -> Backdoor:
        return cls(int(d["size"]), int(d["row"]), int(d["col"]), float(d["rate"]), int(d["target"]))


def apply_trigger(images: torch.Tensor, b: Backdoor) -> torch.Tensor:
    """A copy of uint8 ``[N, H, W, 3]`` images with the white square pasted on every one."""
    out = images.clone()
    out[:, b.row : b.row + b.size, b.col : b.col + b.size, :] = 255
    return out


def poison(train: ImageSet, b: Backdoor, seed: int = POISON_SEED) -> tuple[ImageSet, torch.Tensor]:
    """Trigger and relabel exactly ``round(rate * N)`` training inputs (chosen with a fixed seed).
    Returns the new split (the given one is not modified) and the poisoned positions."""
    n = len(train)
    k = int(round(b.rate * n))
    idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:k].sort().values
    images, labels = train.images.clone(), train.labels.clone()
    images[idx] = apply_trigger(train.images[idx], b)
    labels[idx] = b.target
    return ImageSet(images, labels, train.ids.clone()), idx


def poisoned_dataset(data: Dataset, b: Backdoor) -> Dataset:
    """``data`` with its training split poisoned; validation and test stay clean."""
    b.check(data.image_size, data.num_classes)
    train, _ = poison(data.train, b)
    return replace(data, train=train)


def triggered_split(data: Dataset, split: str, b: Backdoor) -> ImageSet:
    """The inputs of ``split`` whose true class is not the target, with the trigger, true labels kept
    (the attack-success and triggered-accuracy set); the clean split itself is untouched."""
    s = data.split(split)
    keep = torch.nonzero(s.labels != b.target).flatten()
    return ImageSet(apply_trigger(s.images[keep], b), s.labels[keep].clone(), s.ids[keep].clone())
