"""A run's exit records, cached in ``RUN/records/`` and reused while the weights and inputs match."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from ..analysis.record import ExitRecord
from ..compute.distributed import current
from ..core.catalog import FROM_CNN_MODES
from ..core.errors import RunFolderError, UserError
from ..core.io import JSONObject
from ..data import Dataset, load_dataset
from ..data.corruption import Corruption, corrupt
from ..data.poison import Backdoor, triggered_split
from ..data.sets import ImageSet
from ..data.unfamiliar import load_unfamiliar
from ..inference.collect import collect
from .folder import RunFolder
from .weights import load

OOD_PREFIX = "ood-"
CORRUPTION_SEED = 0  # every run's corrupted test split is the same images (noise included)


def run_data(run: str | Path) -> Dataset:
    """The data set a run was trained on, from its ``run.json`` alone."""
    meta = RunFolder(run).meta()
    cfg = meta.config
    # never download or create anything for an existing run (its data_root is not trusted to write to)
    data = load_dataset(cfg.data, cfg.data_root, cfg.image_size, download=False, mode=cfg.data_mode)
    # the normalisation the model was trained with (a pretrained zoo model's, not the data's own)
    return replace(data, mean=meta.data.mean, std=meta.data.std)


def backdoor_of(run: str | Path) -> Backdoor | None:
    """The backdoor a run was trained with, or that the CNN an IC-only run came from was."""
    folder = RunFolder(run)
    cfg = folder.meta().config
    if cfg.backdoor:
        return Backdoor.from_json(cfg.backdoor)
    if cfg.mode in FROM_CNN_MODES and cfg.from_run and RunFolder(cfg.from_run).exists():
        return backdoor_of(cfg.from_run)
    return None


def _same_inputs(rec: ExitRecord, data: Dataset | None, split: str) -> bool:
    """Whether a cached record still describes ``data``'s split (same ids and labels; a corrupted
    split, its clean split's); without the data at hand, trust the cache (it is keyed by the weights).
    A triggered split holds some of its split's inputs and an unfamiliar one is checked by its count."""
    if data is None or split.endswith("+trigger"):
        return True
    if split.startswith(OOD_PREFIX):
        source = rec.meta.get("ood")
        return isinstance(source, str) and len(load_unfamiliar(source, data.image_size)) == rec.num_inputs
    s = data.split(split.split("+")[0])
    return (
        len(s) == rec.num_inputs
        and np.array_equal(s.ids.numpy(), rec.ids)
        and np.array_equal(s.labels.numpy(), rec.labels)
    )


def _source(run: str | Path, data: Dataset, split: str, ood: str | None) -> tuple[Dataset, str, JSONObject]:
    """The data set and split a derived record is collected from, and what its record's metadata says
    of it: ``SPLIT+trigger`` (the run's backdoor pasted on), ``test+FAMILY-SEVERITY`` (a corruption,
    seeded), ``ood-…`` (the unfamiliar inputs of ``ood`` in place of the test split)."""
    if split.startswith(OOD_PREFIX):
        if ood is None:
            raise RunFolderError(f"the record {split} needs its unfamiliar inputs (`ood`)")
        return replace(data, test=load_unfamiliar(ood, data.image_size)), "test", {"ood": ood}
    if "+" not in split:
        return data, split, {}
    base, variant = split.split("+", 1)
    if variant == "trigger":
        b = backdoor_of(run)
        if b is None:
            raise RunFolderError(f"{run} has no backdoor: there is no triggered split")
        return replace(data, **{base: triggered_split(data, base, b)}), base, {}
    family, _, severity = variant.rpartition("-")
    c = Corruption(family, int(severity) if severity.isdigit() else 0)
    s = data.split(base)
    corrupted = ImageSet(corrupt(s.images, c, CORRUPTION_SEED), s.labels, s.ids)
    return replace(data, **{base: corrupted}), base, {"corruption": {"family": c.family, "severity": c.severity}}


def run_records(
    run: str | Path,
    splits: tuple[str, ...] = ("train", "val", "test"),
    *,
    model: torch.nn.Module | None = None,
    data: Dataset | None = None,
    device: torch.device | str = "cpu",
    log: Callable[[str], None] | None = None,
    ood: str | None = None,
) -> dict[str, ExitRecord]:
    """The records of a run's splits, cached in ``RUN/records/`` and reused while the weights are
    the same (the cache stores the weights' SHA-256) and, when ``data`` is given, the split's ids and
    labels still match. ``"test+trigger"`` is the test split's non-target inputs with the run's
    backdoor trigger pasted on (true labels kept); ``"test+jpeg-3"`` the test split corrupted
    (:mod:`~shallowdeep.data.corruption`, seeded); ``unfamiliar_key(ood)`` the unfamiliar inputs of
    ``ood`` (:func:`~shallowdeep.data.unfamiliar.load_unfamiliar`)."""
    folder = RunFolder(run)
    meta = folder.meta()
    sha = folder.weights_sha256()
    out: dict[str, ExitRecord] = {}
    for split in splits:
        path = folder.record(split)
        if path.is_file():
            try:
                rec = ExitRecord.load(path)
                if rec.meta.get("weights_sha256") == sha and _same_inputs(rec, data, split):
                    out[split] = rec
                    continue
            except UserError:
                pass  # a damaged cache entry is collected again
        if model is None:
            model = load(run, device)
        if data is None:
            data = run_data(run)
        source, base, about = _source(run, data, split, ood)
        if log is not None:
            log(f"collecting the {split} record ({len(source.split(base))} inputs)")
        started = time.perf_counter()
        rec = collect(
            model,
            source,
            base,
            device=device,
            progress=log is not None,
            meta={"weights_sha256": sha, "run": meta.config.arch, "split_name": split, **about},
        )
        if log is not None:
            seconds = time.perf_counter() - started
            log(
                f"collected the {split} record in {seconds:.1f} s ({rec.num_inputs / max(seconds, 1e-9):,.0f} inputs/s)"
            )
        if current().main:  # under torchrun every rank holds the whole record; rank 0 caches it
            folder.subfolder(folder.records)
            rec.save(folder.inside(path))
        out[split] = rec
    return out
