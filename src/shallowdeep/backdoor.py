"""The backdoor experiment (paper sections 4 and 5, spec section 11).

A white square trigger is pasted on a share of the training images, which are relabelled to a
target class; the CNN trained on that learns the backdoor. Turned into an SDN (IC-only, on clean
data), its early ICs often still see the true class: destructive overthinking induced on purpose,
and early exits recover accuracy on triggered inputs.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch

from .data import Dataset, ImageSet
from .errors import UserError

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
    def default(cls, image_size: int, rate: float | None = None, target: int | None = None, size: int | None = None,
                pos: tuple[int, int] | None = None) -> "Backdoor":
        """The spec's trigger (5x5 at (26, 26) of a 32 px image) scaled to ``image_size``; any
        argument given overrides its default."""
        scale = image_size / 32
        s = size if size is not None else max(1, round(5 * scale))
        r, c = pos if pos is not None else (round(26 * scale), round(26 * scale))
        return cls(s, r, c, DEFAULT_RATE if rate is None else rate, DEFAULT_TARGET if target is None else target)

    def check(self, image_size: int, num_classes: int) -> None:
        """Refuse a trigger off the image, a share outside (0, 1], or an unknown target class."""
        if self.size < 1 or self.row < 0 or self.col < 0 or self.row + self.size > image_size \
                or self.col + self.size > image_size:
            raise UserError(f"a {self.size} px trigger at ({self.row}, {self.col}) does not fit a {image_size} px image: "
                            "change --trigger-size or --trigger-pos")
        if not 0 < self.rate <= 1:
            raise UserError(f"--poison-rate must lie in (0, 1], got {self.rate}")
        if not 0 <= self.target < num_classes:
            raise UserError(f"--target-class must lie in 0..{num_classes - 1}, got {self.target}")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Backdoor":
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


def backdoor_of(run: str | Path) -> Backdoor | None:
    """The backdoor a run was trained with, or that the CNN an IC-only run came from was."""
    from .runs import RUN_JSON, read_json

    cfg = read_json(Path(run) / RUN_JSON).get("config", {})
    if cfg.get("backdoor"):
        return Backdoor.from_json(cfg["backdoor"])
    if cfg.get("mode") == "ic-only" and cfg.get("from_run") and (Path(cfg["from_run"]) / RUN_JSON).is_file():
        return backdoor_of(cfg["from_run"])
    return None


def backdoor_figures(clean, triggered, b: Backdoor, threshold: float | None, fallback: str) -> dict[str, Any]:
    """Clean accuracy, attack success, accuracy on triggered inputs (final output, each output, and
    with early exits at ``threshold``), and destructive overthinking on triggered inputs."""
    from .analysis import early_exit, overthinking

    k = triggered.num_outputs
    hit_target = (triggered.preds == b.target).mean(0) if triggered.num_inputs else torch.zeros(k).numpy()
    out: dict[str, Any] = {
        "trigger": b.to_json(),
        "triggered_inputs": triggered.num_inputs,
        "clean_accuracy_final": float(clean.accuracy()[-1]),
        "attack_success_final": float(hit_target[-1]),
        "triggered_accuracy_final": float(triggered.accuracy()[-1]),
        "per_output": {"attack_success": hit_target.tolist(), "triggered_accuracy": triggered.accuracy().tolist(),
                       "clean_accuracy": clean.accuracy().tolist()},
    }
    if threshold is not None and k > 1:
        e = early_exit(triggered, threshold, fallback)
        ec = early_exit(clean, threshold, fallback)
        out["early_exit"] = {"threshold": threshold, "fallback": fallback,
                             "triggered_accuracy": e["accuracy"], "triggered_relative_cost": e["relative_cost"],
                             "triggered_exit_counts": e["exit_counts"],
                             "attack_success": float((e["predictions"] == b.target).mean()) if triggered.num_inputs else 0.0,
                             "clean_accuracy": ec["accuracy"], "clean_relative_cost": ec["relative_cost"]}
        o = overthinking(triggered)
        out["destructive_on_triggered"] = {"union_count": o["destructive"]["union_count"],
                                           "union_share_of_final_errors": o["destructive"]["union_share_of_final_errors"],
                                           "per_ic": [d["count"] for d in o["destructive"]["per_ic"]],
                                           "early_share": o["early_share"]}
    return out
