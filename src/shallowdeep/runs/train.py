"""Training into a run folder: resolve and merge the configuration, resume, checkpoint, finish.

The loop itself (:mod:`shallowdeep.training`) knows nothing of folders; this module hands it the
batches, the runtime and an ``on_epoch`` callback that checkpoints (written atomically behind the
loop, :mod:`.checkpoint`). :func:`warm_compile` compiles a run's step ahead of the run (:mod:`.precompile`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ..compute import distributed
from ..core.catalog import DEFAULT_SEED, FROM_CNN_MODES, TOKEN_POOLS
from ..core.errors import ArgumentError, RunFolderError, UserError
from ..core.fields import check_fields
from ..core.io import JSONObject, remove_stale_temps, sha256_file
from ..core.stopwatch import Stopwatch
from ..core.words import counted
from ..data import Batches, Dataset, batches, load_dataset, parse_data_name
from ..inference.collect import forward_batch_size
from ..models import list_archs
from ..models.convert import build_model, module_arch, module_cnn
from ..models.costs import output_costs
from ..models.sdn import SDN
from ..models.zoo import is_zoo_name
from ..training import EpochResult, Recipe, Runtime, default_recipe, epoch_seed, fit, make_mode, mode_of, pick_device
from .checkpoint import CheckpointWriter
from .folder import RunFolder
from .meta import DataMeta, ModelMeta, RunConfig, RunMeta
from .shape import decode_size
from .weights import (
    load,
    load_weights,
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_tensors,
    save_weights,
    state_bytes,
    tensors_to_bytes,
)

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
    backdoor: JSONObject | None = None  # {"rate", "target", "size", "pos"}: any may be None
    # zoo models: the zoo's weights or a weights file, and where the ICs go (names, or cost fractions)
    pretrained: bool | None = None
    weights: str | None = None
    ic_cuts: tuple[str, ...] | None = None
    ic_fractions: tuple[float, ...] | None = None
    data_mode: str | None = None  # "memory", "stream" or None (chosen by the data's size)
    token_pool: str | None = None  # IC heads on tokens: "mean" (None) or "cls"
    cascade: bool | None = None  # ZTW's cascade links between the ICs
    teacher: str | None = None  # a finished run the ICs distil from (with `distill`); None: the own final output
    module: nn.Module | None = None  # the Python API's own classifier (never recorded as code)
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
    schedule: str | None = None
    clip_grad_norm: float | None = None
    distill: float | None = None
    distill_temperature: float | None = None

    def __post_init__(self) -> None:
        check_fields(self, skip=("module",))  # a module is checked where it is built

    def recipe_overrides(self) -> dict[str, Any]:
        """The recipe fields this configuration sets."""
        return {k: getattr(self, k) for k in RECIPE_KEYS if getattr(self, k) is not None}


# the request's fields a run records in its configuration (run.json's "config")
_RECORDED = (
    "mode",
    "arch",
    "data",
    "from_run",
    "seed",
    "data_root",
    "image_size",
    "pretrained",
    "weights",
    "ic_cuts",
    "ic_fractions",
    "data_mode",
    "token_pool",
    "cascade",
    "teacher",
)


def _resolve(cfg: TrainConfig, previous: RunMeta | None) -> RunConfig:
    """Merge the request with a resumed run's settings (a contradiction is an error), fill an ic-only
    run's data from its CNN run and the defaults."""
    if cfg.module is not None:
        if cfg.arch is not None and cfg.arch != module_arch(cfg.module):
            raise ArgumentError("give a `module` or an `arch`, not both")
        cfg = replace(cfg, arch=module_arch(cfg.module))
    r = _merged(cfg, previous)
    _check_values(r, user_module=cfg.module is not None)
    zoo = bool(r["arch"]) and is_zoo_name(r["arch"])
    if r["mode"] in FROM_CNN_MODES and not r["from_run"] and zoo and (r["pretrained"] or r["weights"]):
        pass  # on a trained zoo backbone, as it comes
    elif r["mode"] in FROM_CNN_MODES:
        _from_cnn_run(r)
    elif r["from_run"]:
        raise ArgumentError(f"`from_run` is only for the `mode` {' or '.join(FROM_CNN_MODES)}")
    if not r["arch"]:
        raise ArgumentError(f"`arch` is required: choose one of {', '.join(list_archs())}")
    if not r["data"]:
        raise ArgumentError(
            "`data` is required: a registered data set (cifar10, cifar100, tinyimagenet, digits) or imagefolder:PATH"
        )
    if r["seed"] is None:
        r["seed"] = DEFAULT_SEED
    r["backdoor"] = _backdoor_asked(cfg, previous, r["mode"])
    return RunConfig(**r)


def _merged(cfg: TrainConfig, previous: RunMeta | None) -> dict[str, Any]:
    """The recorded fields: as asked for a new run; a resumed run's own, refusing a different request."""
    prev = previous.config.to_json() if previous is not None else {}
    resolved: dict[str, Any] = {}
    for key in _RECORDED:
        asked = getattr(cfg, key)
        if key in ("ic_cuts", "ic_fractions") and asked is not None:
            asked = list(asked)  # as JSON keeps it
        if key in ("from_run", "data_root", "weights", "teacher") and asked is not None:
            asked = str(Path(asked).resolve())  # the run must still find it from another folder
        if previous is not None and asked is not None and prev.get(key) != asked:
            raise ArgumentError(
                f"{cfg.out} holds a different run (`{key}` {prev.get(key)!r}, not {asked!r}): choose another `out`"
            )
        resolved[key] = asked if previous is None else prev.get(key)
    return resolved


def _check_values(r: dict[str, Any], user_module: bool) -> None:
    """Each recorded value on its own: present, in range, meant for this kind of model."""
    if r["mode"] is None:
        raise ArgumentError("`mode` is required: cnn, ic-only or sdn")
    make_mode(r["mode"])
    if r["seed"] is not None and not (isinstance(r["seed"], int) and 0 <= r["seed"] <= MAX_SEED):
        raise ArgumentError(f"`seed` must be an integer in 0..{MAX_SEED}, got {r['seed']}")
    if r["image_size"] is not None and not 8 <= r["image_size"] <= 1024:
        raise ArgumentError(f"`image_size` must lie in 8..1024 px, got {r['image_size']}")
    zoo = bool(r["arch"]) and is_zoo_name(r["arch"])
    if (r["pretrained"] or r["weights"] or r["ic_cuts"] or r["ic_fractions"]) and not zoo and not user_module:
        raise ArgumentError(
            "`pretrained`, `weights`, `ic_cuts` and `ic_fractions` are for zoo models (`arch` "
            "torchvision:NAME or timm:NAME) and user modules"
        )
    if r["data_mode"] not in (None, "memory", "stream"):
        raise ArgumentError(f"`data_mode` is memory or stream, not {r['data_mode']!r}")
    if r["cascade"] and r["mode"] == "cnn":
        raise ArgumentError("`cascade` links the ICs of an SDN: for the ic-only, sdn or mixed `mode`")
    if r["teacher"] and r["mode"] == "cnn":
        raise ArgumentError("`teacher` is what the ICs distil from: for the ic-only, sdn or mixed `mode`")
    if r["token_pool"] is not None:
        if r["token_pool"] not in TOKEN_POOLS:
            raise ArgumentError(f"`token_pool` is {' or '.join(TOKEN_POOLS)}, not {r['token_pool']!r}")
        if r["mode"] == "cnn":
            raise ArgumentError("`token_pool` chooses how the ICs pool tokens: for the ic-only, sdn or mixed `mode`")


def _from_cnn_run(r: dict[str, Any]) -> None:
    """An ic-only or mixed run takes its architecture and data from a finished CNN run (``from_run``)."""
    mode = r["mode"]
    if not r["from_run"]:
        raise ArgumentError(
            f"{mode} training needs `from_run`, a finished CNN run (or a zoo `arch` with "
            "`pretrained` or `weights` whose classifier fits the data)"
        )
    src = RunFolder(r["from_run"]).meta()
    if src.model.kind != "cnn":
        raise ArgumentError(
            f"`from_run` {r['from_run']} is not a CNN run (kind {src.model.kind!r}): {mode} needs a run "
            "trained in mode cnn"
        )
    if not src.complete:
        raise ArgumentError(f"`from_run` {r['from_run']} has not finished training: resume it first")
    for key in ("arch", "data", "data_root", "image_size", "data_mode"):
        theirs = getattr(src.config, key)
        if r[key] is not None and key in ("arch", "data") and r[key] != theirs:
            raise ArgumentError(
                f"`{key}` {r[key]} contradicts the CNN run's {theirs}: leave it out ({mode} uses the CNN's)"
            )
        if r[key] is None:
            r[key] = theirs
    for key in ("pretrained", "weights"):
        if r[key]:
            raise ArgumentError(f"`{key}` contradicts `from_run`: {mode} uses the CNN run's weights")
    r["ic_cuts"] = r["ic_cuts"] or None


def _backdoor_asked(cfg: TrainConfig, previous: RunMeta | None, mode: str) -> JSONObject | None:
    """A resumed run's backdoor, or the options asked for (resolved to pixels once the data's size is known)."""
    if previous is not None:
        if cfg.backdoor is not None and not previous.config.backdoor:
            raise ArgumentError(f"{cfg.out} holds a different run (not backdoored): choose another `out`")
        return previous.config.backdoor
    if cfg.backdoor is not None and mode in FROM_CNN_MODES:
        raise ArgumentError(
            f"`backdoor` poisons the training of a CNN or SDN (mode cnn or sdn); {mode} trains "
            "on a (backdoored) CNN run with clean data"
        )
    return cfg.backdoor


def _recipe(cfg: TrainConfig, r: RunConfig, previous: RunMeta | None) -> Recipe:
    asked = cfg.recipe_overrides()
    if previous is not None:
        recipe = previous.recipe
        for k, v in asked.items():
            if getattr(recipe, k) != (tuple(v) if k == "milestones" else v):
                raise ArgumentError(
                    f"{cfg.out} holds a different run (`{k}` {getattr(recipe, k)}, not {v}): choose another `out`"
                )
        return recipe
    recipe = default_recipe(r.mode, r.arch, asked.get("epochs"))
    if "milestones" in asked:
        asked["milestones"] = tuple(asked["milestones"])
    elif asked.get("schedule") == "cosine":
        asked["milestones"] = ()  # the paper's milestones belong to its multistep schedule
    recipe = replace(recipe, **asked).check()
    mode_of(r.mode, recipe)  # a mode refuses what it cannot train (distilling into a CNN's no ICs)
    return recipe


def _check_out(out: Path, resume: bool) -> RunMeta | None:
    """The previous ``run.json`` when resuming, after checking the folder may be written."""
    run = RunFolder(out)
    if out.exists() and not out.is_dir():
        raise ArgumentError(f"{out} exists and is not a folder: choose another `out`")
    if run.exists():
        try:
            previous = run.meta()
        except RunFolderError:
            if resume:  # its own message says how to restore it
                raise
            # a new run needs a new folder: this one is someone else's (or a damaged run)
            raise ArgumentError(
                f"{out} holds a run.json that is not a readable shallowdeep run: choose another `out`"
            ) from None
        if not resume:
            raise ArgumentError(f"{out} already holds a run: continue it (`resume`) or choose another `out`")
        if previous.complete:
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


class CompileAhead(Protocol):
    """A compiler of runs' training steps in another process (``runs.precompile.CompiledBeside``):
    ``start()`` once a run is set up; ``ready_for(out)`` the run's question "is the step in the
    compiler's cache yet?" (``None``: the run compiles for itself)."""

    def start(self) -> None: ...

    def ready_for(self, out: str | Path) -> Callable[[], bool] | None: ...


@dataclass(frozen=True)
class ReadyWhen:
    """A :class:`CompileAhead` whose answer is ``ready()`` for every run, for a step compiled
    elsewhere by other means (the tests' stand-in)."""

    ready: Callable[[], bool]

    def start(self) -> None:
        return None

    def ready_for(self, out: str | Path) -> Callable[[], bool] | None:
        return self.ready


@dataclass
class _Setup:
    """A run ready to train: what it resolved to, what it trains and how, and where it resumes."""

    config: RunConfig
    recipe: Recipe
    runtime: Runtime
    data: Dataset
    model: nn.Module
    device: torch.device
    start_epoch: int = 0
    history: list[JSONObject] = field(default_factory=list)
    restore: Callable[[torch.optim.Optimizer], None] | None = None
    teacher: nn.Module | None = None  # the separate run the ICs distil from, frozen
    teacher_sha256: str | None = None


def train_run(
    cfg: TrainConfig,
    *,
    stop_after: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    beside: CompileAhead | None = None,
) -> Path:
    """Train into the run folder ``cfg.out`` (creating or resuming it) and return its path.

    Every input is checked before anything is written, so bad input leaves no partial folder.
    Under torchrun every rank trains its shard; only rank 0 prints and writes the run folder.
    ``beside`` compiles the run's step in another process (:class:`CompileAhead`): started on rank 0
    once the run is set up, before its first step (its data decoded and cached, on CUDA its context
    taken); a compiled run trains eagerly until it says the step is ready.
    """
    started = time.perf_counter()
    place, rank_device = distributed.join(str(pick_device(cfg.device)))
    if not place.main:
        log, progress = None, False
    out = Path(cfg.out)
    run = RunFolder(out)
    previous = _check_out(out, cfg.resume)
    clock = Stopwatch()
    setup = _set_up(cfg, previous, run, torch.device(rank_device), place, clock)
    training = _Training(setup, run, _started_meta(setup, previous, place), place, clock, started)
    distributed.barrier()  # every rank has checked the folder before rank 0 writes into it
    if place.main:
        out.mkdir(parents=True, exist_ok=True)
        run.write_json(run.run_json, training.meta.to_json())
    if log is not None:
        r, data, rt = setup.config, setup.data, setup.runtime
        log(
            f"{f'resuming at epoch {setup.start_epoch + 1} of' if setup.start_epoch else 'training'} {r.arch} "
            f"({r.mode}) on {r.data}: {len(data.train)} train / {len(data.val)} val images, "
            f"{counted(setup.recipe.epochs, 'epoch')}, {setup.device} "
            f"({rt.precision}{', compiled' if rt.compile else ''})"
        )
    if training.fit(stop_after, progress, log, beside):
        training.finish()
    return out


def _set_up(
    cfg: TrainConfig, previous: RunMeta | None, run: RunFolder, device: torch.device, place: Any, clock: Stopwatch
) -> _Setup:
    """Resolve the run, read its data, build (or restore) its model: everything before the first step."""
    r = _resolve(cfg, previous)
    parse_data_name(r.data)
    if r.arch not in list_archs() and not is_zoo_name(r.arch) and cfg.module is None:
        raise ArgumentError(
            f"unknown `arch` {r.arch!r}: choose one of {', '.join(list_archs())}, or a zoo model "
            "torchvision:NAME or timm:NAME"
        )
    recipe = _recipe(cfg, r, previous)
    if place.enabled and recipe.batch_size % place.world:
        raise ArgumentError(
            f"the `batch_size` {recipe.batch_size} is the global batch and must split evenly over "
            f"{place.world} processes"
        )
    t = time.perf_counter()
    data = _load_data(r, new=previous is None)
    t = clock.add("setup_data", t)
    runtime = _runtime(cfg, previous, device, data, recipe, ddp=place.enabled)
    torch.manual_seed(r.seed)  # weight initialisation
    cnn, norm = _build_cnn(cfg, r, previous, data, run)
    if norm is not None:  # pretrained weights expect their own normalisation
        data = replace(data, mean=norm[0], std=norm[1])
    model: nn.Module = cnn if r.mode == "cnn" else SDN(cnn, token_pool=r.token_pool or "mean", cascade=bool(r.cascade))
    if r.mode in FROM_CNN_MODES and r.from_run and previous is not None:
        theirs = sha256_file(RunFolder(r.from_run).require_weights())
        if theirs != previous.from_run_weights_sha256:
            raise RunFolderError(
                f"the CNN run {r.from_run} changed since this {r.mode} run started (its weights "
                "differ): train the ICs again into a new folder"
            )
    if cnn.num_classes != data.num_classes or cnn.image_size != data.image_size:
        raise ArgumentError(
            f"the CNN takes {cnn.num_classes} classes at {cnn.image_size} px, the data has "
            f"{data.num_classes} at {data.image_size} px"
        )
    setup = _Setup(r, recipe, runtime, data, model, device)
    setup.teacher, setup.teacher_sha256 = _teacher(r, recipe, data, previous)
    _resume_state(setup, previous, run, place.main)
    clock.add("setup_model", t)  # the CNN built, loaded or downloaded, and a checkpoint read
    return setup


def _teacher(
    r: RunConfig, recipe: Recipe, data: Dataset, previous: RunMeta | None
) -> tuple[nn.Module | None, str | None]:
    """The separate run whose final output the ICs distil from (``teacher``), loaded frozen in eval
    mode, and its weights' digest: a finished run of the same data set, classes, image size and
    normalisation, asked with ``distill`` above 0; a resumed run's teacher must be unchanged."""
    if r.teacher is None:
        return None, None
    if recipe.distill <= 0:
        raise ArgumentError("`teacher` is what the ICs distil from: give `distill` above 0 too")
    meta = RunFolder(r.teacher).meta()
    if not meta.complete:
        raise ArgumentError(f"the `teacher` run {r.teacher} has not finished training: resume it first")
    theirs = (meta.config.data, meta.model.num_classes, meta.model.image_size, meta.data.mean, meta.data.std)
    if theirs != (r.data, data.num_classes, data.image_size, tuple(data.mean), tuple(data.std)):
        raise ArgumentError(
            f"the `teacher` run {r.teacher} takes {meta.config.data} ({meta.model.num_classes} classes at "
            f"{meta.model.image_size} px), this run {r.data} ({data.num_classes} at {data.image_size} px) or "
            "normalises its images otherwise: give a teacher trained on the same data"
        )
    digest = sha256_file(RunFolder(r.teacher).require_weights())
    if previous is not None and digest != previous.teacher_weights_sha256:
        raise RunFolderError(
            f"the teacher run {r.teacher} changed since this run started (its weights differ): train "
            "again into a new folder"
        )
    return load(r.teacher).requires_grad_(False), digest


def _load_data(r: RunConfig, new: bool) -> Dataset:
    """The run's data set (recording a streamed folder's choice in ``r``), poisoned for a backdoor run."""
    data = load_dataset(r.data, r.data_root, _image_size(r), mode=r.data_mode)
    if data.meta.get("data_mode") == "stream":  # record what was chosen, so analyses see the same pixels
        r.data_mode, r.image_size = "stream", data.image_size
    if r.backdoor is None:
        return data
    if data.meta.get("data_mode") == "stream":
        raise ArgumentError("`backdoor` poisons images held in memory: use `data_mode` memory")
    from ..data.poison import Backdoor, poisoned_dataset

    if new:  # options (any of them None) -> the spec's trigger scaled to this data
        r.backdoor = Backdoor.from_options(data.image_size, r.backdoor).to_json()
    return poisoned_dataset(data, Backdoor.from_json(r.backdoor))


def _runtime(
    cfg: TrainConfig, previous: RunMeta | None, device: torch.device, data: Dataset, recipe: Recipe, ddp: bool = False
) -> Runtime:
    """How the step runs. A resumed run keeps its precision and compilation (compiled runs drop the
    last partial batch, so switching either would change the epochs still to come); a new one
    compiles by default on one GPU when it has the steps to pay the compilation back."""
    was = previous.runtime if previous is not None else {}
    return Runtime.default(
        device,
        cfg.precision or was.get("precision"),
        cfg.compile if cfg.compile is not None else was.get("compile"),
        ddp=ddp,
        sync_bn=cfg.sync_bn,
        steps=_training_steps(data, recipe),
    )


def _resume_state(setup: _Setup, previous: RunMeta | None, run: RunFolder, main: bool) -> None:
    """A resumed run's weights, epoch, history and optimiser state, from its checkpoint."""
    if previous is not None and main:
        remove_stale_temps(run.path)  # a kill during a write leaves its temporary file behind
    if previous is None or not run.checkpoint.is_file():
        return
    # weights, optimiser state (up to two moments per parameter) and a JSON history: bounded
    tensors, ck = read_tensors(run.checkpoint, max_bytes=4 * state_bytes(setup.model) + (64 << 20))
    load_weights(setup.model, {k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, run.checkpoint)
    setup.start_epoch, setup.history = int(ck["epoch"]), list(ck["history"])

    def restore(opt: torch.optim.Optimizer) -> None:
        optimizer_from_tensors(opt, {k: v for k, v in tensors.items() if k.startswith("optim.")}, ck["optimizer"])

    setup.restore = restore


def _started_meta(setup: _Setup, previous: RunMeta | None, place: Any) -> RunMeta:
    """run.json as training starts (or resumes): the earlier calls' times carried over."""
    r = setup.config
    meta = RunMeta(
        status="running",
        model=ModelMeta.of(setup.model),
        config=r,
        recipe=setup.recipe,
        data=_data_meta(r.data, setup.data),
        runtime=setup.runtime.describe() | ({"world_size": place.world} if place.enabled else {}),
        epochs=setup.history,
        wall_seconds=previous.wall_seconds if previous is not None else 0.0,
        setup_seconds=previous.setup_seconds if previous is not None else 0.0,
        time_parts=dict(previous.time_parts) if previous is not None else {},
    )
    if r.mode in FROM_CNN_MODES and r.from_run:
        kept = previous.from_run_weights_sha256 if previous is not None else None
        meta.from_run_weights_sha256 = kept or sha256_file(RunFolder(r.from_run).require_weights())
    meta.teacher_weights_sha256 = setup.teacher_sha256
    return meta


class _Training:
    """One call's training of a set-up run: the loop, a checkpoint each epoch (written behind it),
    where the time went, and the finished run written at the end."""

    def __init__(
        self, setup: _Setup, run: RunFolder, meta: RunMeta, place: Any, clock: Stopwatch, started: float
    ) -> None:
        self.setup, self.run, self.meta, self.place, self.clock = setup, run, meta, place, clock
        # the stage's wall time over every call that worked on it (data loading, model building,
        # compilation and checkpoints included; a kill loses what ran after the last checkpoint)
        self.started, self.earlier_wall, self.earlier_parts = started, meta.wall_seconds, dict(meta.time_parts)
        self.writer = CheckpointWriter(run)
        self.writer.saved_epochs = setup.start_epoch  # a resumed run's checkpoint holds its earlier epochs
        self.loop_started = 0.0  # when the loop was set off; then when the last epoch's checkpoint was submitted
        self.finish_started = 0.0

    def wall(self) -> float:
        return self.earlier_wall + time.perf_counter() - self.started

    def time_parts(self) -> dict[str, float]:
        """Where the wall time went beside the epochs, over every call: the setup's data loading,
        model building and copy to the device; the start of the loop up to its first epoch; the
        time between epochs (checkpoint snapshots and waits, logging); the finish."""
        return self.clock.merged(self.earlier_parts)

    def on_epoch(self, result: EpochResult, opt: torch.optim.Optimizer) -> None:
        t = time.perf_counter()
        # the start of the loop (first epoch of this call) or the time between two epochs, less the epoch
        key = "between_epochs" if "loop_start" in self.clock.parts else "loop_start"
        self.clock.add_seconds(key, max(0.0, t - self.loop_started - result.seconds))
        history = self.setup.history
        history.append(result.to_json())
        if self.place.main:
            opt_tensors, opt_meta = optimizer_to_tensors(opt)
            tensors = {f"model.{k}": v for k, v in self.setup.model.state_dict().items()} | opt_tensors
            meta = replace(self.meta, epochs=list(history), wall_seconds=self.wall(), time_parts=self.time_parts())
            self.writer.submit(
                tensors, {"epoch": result.epoch, "history": list(history), "optimizer": opt_meta}, meta.to_json()
            )
        self.loop_started = self.clock.add("between_epochs", t)

    def fit(
        self,
        stop_after: int | None,
        progress: bool,
        log: Callable[[str], None] | None,
        beside: CompileAhead | None,
    ) -> bool:
        """Train this call's epochs; whether the run has all of its epochs now."""
        s = self.setup
        # on CUDA the data set lives on the GPU as uint8 and is shuffled and augmented there; on the CPU
        # the same code runs where it is (and a resume there replays epochs bit for bit)
        t = time.perf_counter()
        resident = s.data.to(s.device) if s.device.type == "cuda" else s.data
        self.clock.add("setup_device", t)
        eval_batch = forward_batch_size(s.device)
        shard = (self.place.rank, self.place.world)
        train_batches = _train_batches(resident, s.recipe, s.runtime, s.device, s.config.seed, shard)
        # the part of the wall time before the first step (data loading and building), over every call
        self.meta.setup_seconds += time.perf_counter() - self.started
        self.loop_started = time.perf_counter()
        if beside is not None and self.place.main:
            beside.start()
        compile_ready = beside.ready_for(self.run.path) if beside is not None else None
        try:
            fit(
                s.model,
                mode_of(s.config.mode, s.recipe),
                s.recipe,
                train_batches,
                lambda: batches(resident, "val", eval_batch, device=s.device, shard=shard),
                seed=s.config.seed,
                runtime=s.runtime,
                start_epoch=s.start_epoch,
                restore=s.restore,
                on_epoch=self.on_epoch,
                stop_after=stop_after,
                progress=progress,
                log=log,
                compile_ready=compile_ready,
                teacher=s.teacher,
            )
        except (UserError, OSError) as e:  # a file the data loader met mid-run, a full disk: the run can go on
            self.writer.wait(raise_error=False)
            done = self.writer.saved_epochs  # on disk: the checkpoint that failed, if one did, is not
            kept = f"{self.run.path} keeps its {counted(done, 'finished epoch')}: fix that and continue it (`resume`)"
            if isinstance(e, OSError) and done:
                e.add_note(kept)
            elif e.args and done:
                e.args = (f"{e.args[0]}; {kept}",)
            raise
        except BaseException as e:
            self.writer.wait(raise_error=False)  # the last checkpoint is whole on disk before the error leaves
            if isinstance(e, KeyboardInterrupt):  # Ctrl-C or SIGTERM (the command line makes it one)
                e.add_note(f"{self.run.path} keeps its {counted(self.writer.saved_epochs, 'finished epoch')}")
            raise
        self.finish_started = time.perf_counter()
        self.writer.wait()
        return len(s.history) >= s.recipe.epochs  # else stopped early on request: a resume continues

    def finish(self) -> None:
        """The trained weights, the costs and the finished run.json; the checkpoint goes."""
        model, meta, run = self.setup.model, self.meta, self.run
        model.eval()
        model.to(memory_format=torch.contiguous_format)
        if self.place.enabled:  # DDP keeps replicas equal; check it rather than assume it
            import hashlib

            digest = hashlib.sha256(tensors_to_bytes(model.state_dict())).hexdigest()
            per_rank = distributed.all_equal(digest)
            meta.runtime = meta.runtime | {"weights_sha256_per_rank": per_rank, "ranks_agree": len(set(per_rank)) == 1}
        if self.place.main:
            save_weights(run.inside(run.weights), model)
            meta.epochs, meta.status = self.setup.history, "complete"
            meta.costs = output_costs(model.cpu()).to_json()
            meta.weights_sha256 = sha256_file(run.weights)
            self.clock.add("finish", self.finish_started)
            meta.wall_seconds, meta.time_parts = self.wall(), self.time_parts()
            run.write_json(run.run_json, meta.to_json())
            run.checkpoint.unlink(missing_ok=True)
        distributed.barrier()


def may_compile(cfg: TrainConfig) -> bool:
    """Whether :func:`warm_compile` may compile anything for ``cfg``, decided without reading data:
    a paper network, neither poisoned nor a user's module, on a device where its run would compile
    given steps enough (by default one CUDA device)."""
    if cfg.arch not in list_archs() or cfg.backdoor is not None or cfg.module is not None or cfg.teacher:
        return False  # (a teacher's forward would be part of the step: none is loaded ahead)
    return Runtime.default(
        torch.device(str(pick_device(cfg.device))), cfg.precision, cfg.compile, steps=sys.maxsize
    ).compile


def warm_compile(cfg: TrainConfig) -> bool:
    """Compile the training step a new run of ``cfg`` would compile, on random weights and one batch
    of its data, so that the compiler's on-disk cache holds it when that run starts; the setup is
    the run's own (:func:`_resolve`, :func:`_recipe`, :func:`_load_data`, :func:`_runtime`,
    :func:`_build_cnn`). An ic-only ``cfg`` names its ``arch`` and ``data`` instead of ``from_run``
    (the CNN run need not exist yet: its weights are not part of the compiled code). Returns whether
    a step was compiled: ``False`` for a run that would not compile (the CPU's default, too few
    steps), that streams its data, poisons it, or trains a zoo model (whose weights may need a download)."""
    if not may_compile(cfg):
        return False
    device = torch.device(str(pick_device(cfg.device)))
    ic_only, from_cnn = cfg.mode == "ic-only", cfg.mode in FROM_CNN_MODES
    r = _resolve(replace(cfg, mode="sdn" if from_cnn else cfg.mode, from_run=None, resume=False), None)
    r.mode = cfg.mode
    recipe = _recipe(cfg, r, None)
    data = _load_data(r, new=True)
    if data.meta.get("data_mode") == "stream":
        return False
    runtime = _runtime(cfg, None, device, data, recipe)  # the stage's own decision, from its own steps
    if not runtime.compile or len(data.train) < recipe.batch_size:
        return False
    torch.manual_seed(r.seed)
    cnn, _ = _build_cnn(cfg, r, None, data, None)
    model = cnn if r.mode == "cnn" else SDN(cnn, token_pool=r.token_pool or "mean", cascade=bool(r.cascade))
    if ic_only:
        cnn.eval()  # as a finished CNN run is loaded
    one = torch.arange(recipe.batch_size)
    probe = replace(data, train=data.train.subset(one), val=data.val.subset(one[:0]))
    resident = probe.to(device) if device.type == "cuda" else probe
    fit(
        model,
        mode_of(r.mode, recipe),
        recipe,
        _train_batches(resident, recipe, runtime, device, r.seed, (0, 1)),
        lambda: [],
        seed=r.seed,
        runtime=runtime,
        stop_after=1,
        progress=False,
        log=None,
    )
    return True


def _training_steps(data: Dataset, recipe: Recipe) -> int:
    """A run's training steps, what the compile decision reads (a run and its compilation ahead must agree)."""
    return len(data.train) // recipe.batch_size * recipe.epochs


def _train_batches(
    resident: Dataset, recipe: Recipe, runtime: Runtime, device: torch.device, seed: int, shard: tuple[int, int]
) -> Callable[[int], Batches]:
    """Each epoch's training batches, shuffled and augmented from that epoch's own seed."""

    def of_epoch(epoch: int) -> Batches:
        gen = torch.Generator(device=resident.train.images.device).manual_seed(epoch_seed(seed, epoch))
        return batches(
            resident,
            "train",
            recipe.batch_size,
            train=True,
            generator=gen,
            device=device,
            shard=shard,
            drop_last=runtime.fixed_shapes,
        )

    return of_epoch


def _image_size(r: RunConfig) -> int | None:
    """The size images are decoded at (:func:`~.shape.decode_size`, the rule ``info`` follows too)."""
    return decode_size(r.arch, r.image_size, r.data_mode)


def _build_cnn(
    cfg: TrainConfig, r: RunConfig, previous: RunMeta | None, data: Dataset, run: RunFolder | None
) -> tuple[Any, tuple[tuple[float, ...], tuple[float, ...]] | None]:
    """The CNN to train and the normalisation its weights expect (``None``: the data's own)."""
    from .weights import build_from

    if previous is not None and run is not None and run.checkpoint.is_file():
        # the checkpoint holds every weight: rebuild the recorded split, no download, same normalisation
        model = build_from(previous.model, cfg.module)
        cnn = model.cnn if isinstance(model, SDN) else model
        return cnn, (previous.data.mean, previous.data.std)
    if r.mode in FROM_CNN_MODES and r.from_run:
        trained = RunFolder(r.from_run).meta().data
        return load(r.from_run), (trained.mean, trained.std)
    if cfg.module is not None:
        return module_cnn(cfg.module, data.image_size, fractions=r.ic_fractions, cuts=r.ic_cuts), None
    cnn, zm = build_model(
        r.arch,
        data.num_classes,
        data.image_size,
        pretrained=bool(r.pretrained),
        weights=r.weights,
        cuts=r.ic_cuts,
        fractions=r.ic_fractions,
    )
    if r.mode in FROM_CNN_MODES and zm is not None and zm.notes:
        raise ArgumentError(
            f"the {r.arch} weights classify another number of classes than the data's "
            f"{data.num_classes} ({zm.notes[0]}): fine-tune it first (`mode` cnn) and train the ICs "
            "from that run (`from_run`)"
        )
    return cnn, ((tuple(zm.mean), tuple(zm.std)) if zm is not None and zm.mean is not None else None)


def _data_meta(name: str, data: Dataset) -> DataMeta:
    details = {
        "flip": data.flip,
        "jitter": data.jitter,
        "sizes": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
    }
    mean, std = (tuple(float(v) for v in data.mean), tuple(float(v) for v in data.std))
    return DataMeta(name, list(data.classes), data.image_size, mean, std, details | dict(data.meta))
