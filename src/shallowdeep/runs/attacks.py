"""Slowdown-attacked records of a run: ``RUN/records/SPLIT+slowdown-….safetensors``, beside the clean
ones, and a universal attack's perturbation in ``RUN/attacks/``."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ..analysis.record import ExitRecord
from ..core.errors import ArgumentError, UserError
from ..data.sets import ImageSet
from ..inference.attack import SlowdownAttack, slowdown
from ..inference.collect import collect
from .folder import RunFolder
from .records import run_data
from .weights import load, tensors_to_bytes

ATTACKED_SPLITS = ("val", "test")
ATTACKS = "attacks"


@dataclass(frozen=True)
class AttackedRecord:
    """What :func:`attack_run` wrote: the attacked inputs' record (and where), the universal
    perturbation's file (or ``None``) and the seconds the attack took (crafting, not collecting)."""

    record: ExitRecord
    path: Path
    perturbation: Path | None
    seconds: float


def _checked(folder: RunFolder, split: str, inputs: int | None) -> None:
    if folder.meta().model.kind != "sdn":
        raise ArgumentError(f"{folder.path} is a CNN run: a slowdown attack needs an SDN (its ICs are what it fools)")
    if split not in ATTACKED_SPLITS:
        raise ArgumentError(f"the attacked `split` is val or test, not {split!r}")
    if inputs is not None and (isinstance(inputs, bool) or not isinstance(inputs, int) or inputs < 1):
        raise ArgumentError(f"`inputs` is how many of the split's first inputs to attack (>= 1), got {inputs!r}")


def attack_run(
    run: str | Path,
    attack: SlowdownAttack,
    *,
    split: str = "test",
    inputs: int | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
) -> AttackedRecord:
    """Attack the first ``inputs`` (all by default) of a run's ``split`` with ``attack`` and record
    every output on the attacked images; a universal attack is crafted on the run's training images."""
    folder = RunFolder(run)
    _checked(folder, split, inputs)
    name = f"{split}+{attack.label}"
    path = folder.inside(folder.record(name))  # every output path checked before the first write
    flat = folder.inside(folder.path / ATTACKS / f"{attack.label}.safetensors") if attack.universal else None
    sha = folder.weights_sha256()
    data, model = run_data(run), load(run, device)
    s = data.split(split)
    if inputs is not None:
        s = s.subset(torch.arange(min(inputs, len(s))))
    if log is not None:
        log(f"attacking {len(s)} {split} inputs: {attack.label} ({attack.steps} steps of {attack.step_size:g})")
    started = time.perf_counter()
    craft = data.train.images[: attack.craft_inputs] if attack.universal else None
    done = slowdown(model, s.images, data.mean, data.std, attack, craft=craft, device=device, progress=log is not None)
    seconds = time.perf_counter() - started
    source = replace(data, **{split: ImageSet(done.images, s.labels, s.ids)})
    about = {"weights_sha256": sha, "run": folder.meta().config.arch, "split_name": name}
    rec = collect(model, source, split, device=device, meta=about | {"attack": attack.to_json(), "seconds": seconds})
    folder.subfolder(folder.records)
    rec.save(path)
    if flat is not None and done.perturbation is not None:
        folder.subfolder(flat.parent)
        folder.write_bytes(flat, tensors_to_bytes({"perturbation": done.perturbation.contiguous()}))
    if log is not None:
        log(f"attacked in {seconds:.1f} s; record: {path}")
    return AttackedRecord(rec, path, flat, seconds)


def attacked_records(run: str | Path, split: str = "test") -> list[ExitRecord]:
    """The attacked records of a run's ``split`` made for its current weights, by label; a damaged
    or stale one (other weights) is left out."""
    folder = RunFolder(run)
    if not folder.records.is_dir():
        return []
    sha = folder.weights_sha256()
    found = []
    for path in sorted(folder.records.glob(f"{split}+slowdown-*.safetensors")):
        try:
            rec = ExitRecord.load(path)
            SlowdownAttack.from_json(rec.meta.get("attack"))
        except UserError:
            continue
        if rec.meta.get("weights_sha256") == sha:
            found.append(rec)
    return found
