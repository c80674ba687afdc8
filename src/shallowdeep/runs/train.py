"""Training into a run folder: resolve and merge the configuration, resume, checkpoint, finish.

The loop itself (:mod:`shallowdeep.training`) knows nothing of folders; this module hands it the
batches, the runtime and an ``on_epoch`` callback that writes the checkpoint atomically.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..core.errors import ArgumentError, RunFolderError
from ..core.io import remove_stale_temps, sha256_file
from ..costs import output_costs
from ..data import Dataset, batches, load_dataset, parse_data_name
from ..models import build_cnn, list_archs
from ..sdn import SDN
from ..training import EpochResult, Recipe, Runtime, default_recipe, epoch_seed, fit, make_mode, pick_device
from .. import distributed
from .folder import FORMAT, RunFolder
from .weights import (describe, load, load_weights, optimizer_from_tensors, optimizer_to_tensors, read_tensors,
                      save_weights, state_bytes, tensors_to_bytes)

DEFAULT_SEED = 1221  # the reference code's
RECIPE_KEYS = tuple(f.name for f in fields(Recipe))
MAX_SEED = 2**63 - 1


@dataclass
class TrainConfig:
    """What a training was asked for; ``None`` means the default (or, on resume, the run's)."""

    out: str
    mode: str | None = None
    arch: str | None = None
    data: str | None = None
    from_run: str | None = None
    seed: int | None = None
    data_root: str | None = None
    image_size: int | None = None
    resume: bool = False
    device: str | None = None
    precision: str | None = None
    compile: bool | None = None
    sync_bn: bool = False
    backdoor: dict[str, Any] | None = None  # {"rate", "target", "size", "pos"}: any may be None
    # recipe: None keeps the paper's value for the mode
    epochs: int | None = None
    batch_size: int | None = None
    optimizer: str | None = None
    lr: float | None = None
    momentum: float | None = None
    nesterov: bool | None = None
    weight_decay: float | None = None
    milestones: tuple[int, ...] | None = None
    gamma: float | None = None
    warmup_epochs: int | None = None
    label_smoothing: float | None = None

    def recipe_overrides(self) -> dict[str, Any]:
        """The recipe fields this configuration sets."""
        return {k: getattr(self, k) for k in RECIPE_KEYS if getattr(self, k) is not None}


def _resolve(cfg: TrainConfig, previous: dict[str, Any] | None) -> dict[str, Any]:
    """Merge the request with a resumed run's settings; a contradiction is an error."""
    prev = (previous or {}).get("config", {})
    resolved: dict[str, Any] = {}
    for key in ("mode", "arch", "data", "from_run", "seed", "data_root", "image_size"):
        asked = getattr(cfg, key)
        if key in ("from_run", "data_root") and asked is not None:
            asked = str(Path(asked).resolve())  # the run must still find it from another folder
        if previous is not None and asked is not None and prev.get(key) != asked:
            raise ArgumentError(f"{cfg.out} holds a different run (`{key}` {prev.get(key)!r}, not {asked!r}): "
                                "choose another `out`")
        resolved[key] = asked if previous is None else prev.get(key)
    if resolved["mode"] is None:
        raise ArgumentError("`mode` is required: cnn, ic-only or sdn")
    make_mode(resolved["mode"])
    if resolved["seed"] is not None and not (isinstance(resolved["seed"], int) and 0 <= resolved["seed"] <= MAX_SEED):
        raise ArgumentError(f"`seed` must be an integer in 0..{MAX_SEED}, got {resolved['seed']}")
    if resolved["image_size"] is not None and not 8 <= resolved["image_size"] <= 1024:
        raise ArgumentError(f"`image_size` must lie in 8..1024 px, got {resolved['image_size']}")
    if resolved["mode"] == "ic-only":
        if not resolved["from_run"]:
            raise ArgumentError("ic-only training needs `from_run`, a finished CNN run")
        src_run = RunFolder(resolved["from_run"])
        src = src_run.meta()
        if src.get("model", {}).get("kind") != "cnn":
            raise ArgumentError(f"`from_run` {resolved['from_run']} is not a CNN run (kind "
                                f"{src.get('model', {}).get('kind')!r}): ic-only needs a run trained in mode cnn")
        if src.get("status") != "complete":
            raise ArgumentError(f"`from_run` {resolved['from_run']} has not finished training: resume it first")
        for key in ("arch", "data", "data_root", "image_size"):
            theirs = src.get("config", {}).get(key)
            if resolved[key] is not None and key in ("arch", "data") and resolved[key] != theirs:
                raise ArgumentError(f"`{key}` {resolved[key]} contradicts the CNN run's {theirs}: leave it out "
                                    "(ic-only uses the CNN's)")
            if resolved[key] is None:
                resolved[key] = theirs
    elif resolved["from_run"]:
        raise ArgumentError("`from_run` is only for the ic-only `mode`")
    if not resolved["arch"]:
        raise ArgumentError(f"`arch` is required: choose one of {', '.join(list_archs())}")
    if not resolved["data"]:
        raise ArgumentError("`data` is required: a registered data set (cifar10, cifar100, tinyimagenet, digits) or imagefolder:PATH")
    if resolved["seed"] is None:
        resolved["seed"] = DEFAULT_SEED
    if previous is not None:
        if cfg.backdoor is not None and not prev.get("backdoor"):
            raise ArgumentError(f"{cfg.out} holds a different run (not backdoored): choose another `out`")
        resolved["backdoor"] = prev.get("backdoor")
    else:
        if cfg.backdoor is not None and resolved["mode"] == "ic-only":
            raise ArgumentError("`backdoor` poisons the training of a CNN or SDN (mode cnn or sdn); ic-only trains "
                                "the ICs of a (backdoored) CNN run on clean data")
        resolved["backdoor"] = cfg.backdoor  # resolved to pixels once the data's image size is known
    return resolved


def _recipe(cfg: TrainConfig, r: dict[str, Any], previous: dict[str, Any] | None) -> Recipe:
    asked = cfg.recipe_overrides()
    if previous is not None:
        recipe = Recipe.from_json(previous["recipe"])
        for k, v in asked.items():
            if getattr(recipe, k) != (tuple(v) if k == "milestones" else v):
                raise ArgumentError(f"{cfg.out} holds a different run (`{k}` {getattr(recipe, k)}, not {v}): choose "
                                    "another `out`")
        return recipe
    recipe = default_recipe(r["mode"], r["arch"], asked.get("epochs"))
    if "milestones" in asked:
        asked["milestones"] = tuple(asked["milestones"])
    return replace(recipe, **asked).check()


def _check_out(out: Path, resume: bool) -> dict[str, Any] | None:
    """The previous ``run.json`` when resuming, after checking the folder may be written."""
    run = RunFolder(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder: choose another `out`")
    if run.exists():
        previous = run.meta()
        if not resume:
            raise ArgumentError(f"{out} already holds a run: continue it (`resume`) or choose another `out`")
        if previous.get("status") == "complete":
            raise ArgumentError(f"{out} holds a finished run: nothing to resume; choose another `out`")
        return previous
    if resume:
        raise ArgumentError(f"nothing to resume: {out} holds no run")
    if out.exists() and any(out.iterdir()):
        raise ArgumentError(f"{out} exists and is not an empty folder: choose another `out`")
    for parent in out.parents:  # the folder will be created: its nearest existing parent must be a folder
        if parent.exists():
            if not parent.is_dir():
                raise ArgumentError(f"{parent} is a file, so `out` {out} cannot be created below it")
            break
    return None


def train_run(cfg: TrainConfig, *, stop_after: int | None = None, progress: bool = True,
              log: Callable[[str], None] | None = print) -> Path:
    """Train into the run folder ``cfg.out`` (creating or resuming it) and return its path.

    Every input is checked before anything is written, so bad input leaves no partial folder.
    Under torchrun every rank trains its shard; only rank 0 prints and writes the run folder.
    """
    asked_device = pick_device(cfg.device)
    place = distributed.setup(asked_device.type)
    if not place.main:
        log, progress = None, False
    out = Path(cfg.out)
    run = RunFolder(out)
    previous = _check_out(out, cfg.resume)
    r = _resolve(cfg, previous)
    parse_data_name(r["data"])
    if r["arch"] not in list_archs():
        raise ArgumentError(f"unknown `arch` {r['arch']!r}: choose one of {', '.join(list_archs())}")
    recipe = _recipe(cfg, r, previous)
    device = torch.device("cuda", place.local_rank) if place.enabled and asked_device.type == "cuda" else asked_device
    if place.enabled and recipe.batch_size % place.world:
        raise ArgumentError(f"the `batch_size` {recipe.batch_size} is the global batch and must split evenly over "
                            f"{place.world} processes")
    runtime = Runtime.default(device, cfg.precision, cfg.compile, ddp=place.enabled, sync_bn=cfg.sync_bn)
    mode = make_mode(r["mode"], recipe.label_smoothing)

    data = load_dataset(r["data"], r["data_root"], r["image_size"])
    if r["backdoor"] is not None:
        from ..backdoor import Backdoor, poisoned_dataset

        bd = r["backdoor"]
        if previous is None:  # options (any of them None) -> the spec's trigger scaled to this data
            pos = tuple(bd["pos"]) if bd.get("pos") is not None else None
            b = Backdoor.default(data.image_size, bd.get("rate"), bd.get("target"), bd.get("size"), pos)
            r["backdoor"] = b.to_json()
        data = poisoned_dataset(data, Backdoor.from_json(r["backdoor"]))
    torch.manual_seed(r["seed"])  # weight initialisation
    if r["mode"] == "ic-only":
        if previous is not None:
            theirs = sha256_file(RunFolder(r["from_run"]).require_weights())
            if theirs != previous.get("from_run_weights_sha256"):
                raise RunFolderError(f"the CNN run {r['from_run']} changed since this ic-only run started (its weights "
                                     "differ): train the ICs again into a new folder")
        cnn = load(r["from_run"])
        if cnn.num_classes != data.num_classes or cnn.image_size != data.image_size:
            raise ArgumentError(f"the CNN run takes {cnn.num_classes} classes at {cnn.image_size} px, the data has "
                                f"{data.num_classes} at {data.image_size} px")
        model: nn.Module = SDN(cnn)
    else:
        cnn = build_cnn(r["arch"], data.num_classes, data.image_size)
        model = cnn if r["mode"] == "cnn" else SDN(cnn)

    history: list[dict[str, Any]] = []
    start_epoch = 0
    restore = None
    if previous is not None and place.main:
        remove_stale_temps(out)  # a kill during a write leaves its temporary file behind
    if previous is not None and run.checkpoint.is_file():
        # weights, optimiser state (up to two moments per parameter) and a JSON history: bounded
        tensors, ck = read_tensors(run.checkpoint, max_bytes=4 * state_bytes(model) + (64 << 20))
        load_weights(model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, run.checkpoint)
        start_epoch, history = int(ck["epoch"]), list(ck["history"])

        def restore(opt: torch.optim.Optimizer) -> None:
            optimizer_from_tensors(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, ck["optimizer"])

    meta: dict[str, Any] = {
        "format": FORMAT,
        "status": "running",
        "model": describe(model),
        "config": r,
        "recipe": recipe.to_json(),
        "runtime": runtime.describe() | ({"world_size": place.world} if place.enabled else {}),
        "data": _data_meta(r["data"], data),
        "epochs": history,
    }
    if r["mode"] == "ic-only":
        meta["from_run_weights_sha256"] = (previous or {}).get("from_run_weights_sha256") or \
            sha256_file(RunFolder(r["from_run"]).require_weights())
    distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    if place.main:
        out.mkdir(parents=True, exist_ok=True)
        run.write_json(run.run_json, meta)
    if log is not None:
        log(f"{'resuming' if start_epoch else 'training'} {r['arch']} ({r['mode']}) on {r['data']}: "
            f"{len(data.train)} train / {len(data.val)} val images, {recipe.epochs} epochs, {device} "
            f"({runtime.precision}{', compiled' if runtime.compile else ''})")

    def on_epoch(result: EpochResult, opt: torch.optim.Optimizer) -> None:
        history.append(result.to_json())
        if not place.main:
            return
        opt_tensors, opt_meta = optimizer_to_tensors(opt)
        tensors = {f"model.{k}": v for k, v in model.state_dict().items()} | opt_tensors
        run.write_bytes(run.checkpoint, tensors_to_bytes(
            tensors, {"epoch": result.epoch, "history": history, "optimizer": opt_meta}))
        run.write_json(run.run_json, meta | {"epochs": history})

    # on CUDA the data set lives on the GPU as uint8 and is shuffled and augmented there; on the CPU
    # the same code runs where it is (and a resume there replays epochs bit for bit)
    resident = data.to(device) if device.type == "cuda" else data
    eval_batch = 1024 if device.type == "cuda" else 512

    shard = (place.rank, place.world)

    def train_batches(epoch: int):
        gen = torch.Generator(device=resident.train.images.device).manual_seed(epoch_seed(r["seed"], epoch))
        return batches(resident, "train", recipe.batch_size, train=True, generator=gen, device=device, shard=shard)

    fit(model, mode, recipe, train_batches, lambda: batches(resident, "val", eval_batch, device=device, shard=shard),
        seed=r["seed"],
        runtime=runtime, start_epoch=start_epoch, restore=restore, on_epoch=on_epoch, stop_after=stop_after,
        progress=progress, log=log)
    if len(history) < recipe.epochs:
        return out  # stopped early on request: the checkpoint lets a resume continue
    model.eval()
    model.to(memory_format=torch.contiguous_format)
    if place.enabled:  # DDP keeps replicas equal; check it rather than assume it
        import hashlib

        digest = hashlib.sha256(tensors_to_bytes(model.state_dict())).hexdigest()
        per_rank = distributed.all_equal(digest)
        meta["runtime"] |= {"weights_sha256_per_rank": per_rank, "ranks_agree": len(set(per_rank)) == 1}
    if place.main:
        save_weights(run.inside(run.weights), model)
        meta |= {"epochs": history, "status": "complete", "costs": output_costs(model.cpu()).to_json(),
                 "weights_sha256": sha256_file(run.weights)}
        run.write_json(run.run_json, meta)
        run.checkpoint.unlink(missing_ok=True)
    distributed.barrier()
    return out


def _data_meta(name: str, data: Dataset) -> dict[str, Any]:
    return {"name": name, "classes": data.classes, "image_size": data.image_size,
            "mean": list(data.mean), "std": list(data.std), "flip": data.flip, "jitter": data.jitter,
            "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}, **data.meta}
